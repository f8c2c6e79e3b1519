//! The OCI distribution API: push an image layout to a registry, pull a base image from one.
//!
//! [`reference`] parses names as Docker does, [`auth`] finds credentials and answers
//! challenges, [`client`] does HTTP with TLS choice and retries, [`push`] and [`pull`] move
//! images.

pub mod auth;
pub mod build_cache;
pub mod client;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod signatures;
pub mod upload;

use std::path::PathBuf;

pub use client::{ClientOptions, RegistryClient};
pub use reference::Reference;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot {action} {url}: the registry stalled (no answer or no data for {secs} s, --network-timeout)"
    )]
    Stalled {
        action: String,
        url: String,
        secs: u64,
    },
    #[error("cannot {action} {url}")]
    Http {
        action: String,
        url: String,
        source: reqwest::Error,
    },
    #[error("cannot {action} {url}: the registry answered {status} ({message})")]
    Status {
        action: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("access denied by {host} (HTTP {status}){}", if *.with_credentials { ": check the user name and password" } else { ": no credentials (imgbuild login, or IMGBUILD_REGISTRY_USER/_PASSWORD)" })]
    Denied {
        host: String,
        status: u16,
        with_credentials: bool,
    },
    #[error(
        "the TLS certificate of {host} is not trusted ({detail}): pass --ca-cert FILE, or put the CA in /etc/docker/certs.d/{host}/ca.crt"
    )]
    Certificate { host: String, detail: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        found: Digest,
    },
    #[error(transparent)]
    Unverified(#[from] signatures::Unverified),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Reference(#[from] reference::BadReference),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
}

/// Layer media types of Docker's schema 2, mapped to OCI's (same bytes, same digest).
pub fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => crate::layer::MEDIA_TYPE_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => crate::layer::MEDIA_TYPE_TAR,
        other => other,
    }
}
