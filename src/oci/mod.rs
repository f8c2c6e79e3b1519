//! OCI outputs and inputs: image layouts on disk (read for `oci:` bases, written for builds)
//! and the image config and manifest documents.

pub mod image;
pub mod layout;

use std::path::PathBuf;

use crate::digest::Digest;

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("digest mismatch for {path}: expected {expected}, found {found}")]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        found: Digest,
    },
    #[error("{layout}: {message}")]
    Select { layout: PathBuf, message: String },
    #[error("cannot build the {0}")]
    Spec(&'static str, #[source] oci_spec::OciSpecError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}
