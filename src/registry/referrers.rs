//! Artifacts that refer to an image (OCI 1.1 `subject`): the SBOM is pushed as an image
//! manifest with `artifactType: application/spdx+json`, the empty config, the document as its
//! one layer, and `subject` naming the image. Registries without the referrers API (CNCF
//! distribution 2.8 has none) learn of it through the referrers tag schema: the image index
//! tagged `sha256-<image digest hex>` lists the image's referrers, and gets this one added.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::client::RegistryClient;
use super::push::status_error;
use super::{ClientOptions, Reference, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::oci::layout::{Desc, Layout};
use crate::oci::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::report::Reporter;

/// The OCI empty descriptor's media type and content (`{}`).
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// What was pushed.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub manifest: Digest,
    /// The referrers fallback tag updated (`sha256-...`).
    pub tag: String,
}

/// Pushes `content` (of `media_type`, also the artifact type) as a referrer of `subject` in
/// `dest`'s repository, and lists it under the fallback tag.
pub fn push(
    dest: &Reference,
    subject: &Desc,
    media_type: &str,
    content: &[u8],
    opts: &ClientOptions,
    cache: Option<&Cache>,
    reporter: &dyn Reporter,
) -> Result<Referrer, RegistryError> {
    let tmp = tempfile::tempdir().map_err(|source| RegistryError::Io {
        action: "create a temporary directory for",
        path: std::env::temp_dir(),
        source,
    })?;
    let layout = Layout::create(tmp.path())?;
    let blob = |media_type: &str, bytes: &[u8]| -> Result<Desc, RegistryError> {
        Ok(Desc {
            media_type: media_type.into(),
            digest: layout.put_bytes(bytes)?,
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        })
    };
    let empty = blob(EMPTY_MEDIA_TYPE, b"{}")?;
    let doc = blob(media_type, content)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": media_type,
        "config": empty,
        "layers": [doc],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
    });
    let desc = layout.put_json(MEDIA_TYPE_MANIFEST, &manifest)?;
    let keep: BTreeSet<Digest> = [empty.digest, doc.digest, desc.digest.clone()].into();
    layout.finish(&desc, &["referrer".to_string()], &keep)?;
    let mut by_digest = dest.clone();
    by_digest.tag = None;
    super::push::push(
        tmp.path(),
        Some("referrer"),
        &by_digest,
        opts,
        cache,
        reporter,
    )?;

    // The referrers tag schema: add this manifest to the index tagged sha256-<hex>.
    let tag = format!("sha256-{}", subject.digest.hex());
    let client = RegistryClient::new(dest, opts, true, &[])?;
    let url = client.url(&format!("/v2/{}/manifests/{tag}", dest.repository));
    let resp = client.send("get referrers index", Method::GET, &url, &|rb| {
        Ok(rb.header(header::ACCEPT, MEDIA_TYPE_INDEX))
    })?;
    let mut index: Value = match resp.status() {
        StatusCode::NOT_FOUND => json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [],
        }),
        StatusCode::OK => {
            let bytes =
                crate::http::read_limited(resp, 4 << 20).map_err(|source| RegistryError::Io {
                    action: "read referrers index",
                    path: url.clone().into(),
                    source,
                })?;
            serde_json::from_slice(&bytes).map_err(|e| {
                RegistryError::Other(format!("{url}: the referrers index is not JSON: {e}"))
            })?
        }
        _ => return Err(status_error("get referrers index", &url, resp)),
    };
    let entry = json!({
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": desc.digest,
        "size": desc.size,
        "artifactType": media_type,
    });
    let list = index["manifests"].as_array_mut().ok_or_else(|| {
        RegistryError::Other(format!("{url}: the referrers index has no manifests"))
    })?;
    if !list.iter().any(|m| m["digest"] == entry["digest"]) {
        list.push(entry);
    }
    let body = crate::canonical::to_vec(&index)
        .map_err(|e| RegistryError::Other(format!("encoding the referrers index: {e}")))?;
    let resp = client.send("put referrers index", Method::PUT, &url, &|rb| {
        Ok(rb
            .header(header::CONTENT_TYPE, MEDIA_TYPE_INDEX)
            .body(body.clone()))
    })?;
    if resp.status() != StatusCode::CREATED {
        return Err(status_error("put referrers index", &url, resp));
    }
    Ok(Referrer {
        manifest: desc.digest,
        tag,
    })
}
