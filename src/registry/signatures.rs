//! Sigstore signatures in a registry, stored as the container tools store them (cosign's tag
//! convention, which skopeo and podman read with `use-sigstore-attachments: true`): the
//! signatures of manifest `sha256:HEX` are the layers of an OCI image manifest tagged
//! `sha256-HEX.sig` in the same repository, each layer a simple-signing payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) with its base64 signature in the
//! annotation `dev.cosignproject.cosign/signature`. Signing adds to what is there (another
//! signer's signatures stay); verifying accepts an image when one of them verifies.

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::client::RegistryClient;
use super::push::status_error;
use super::{ClientOptions, Reference, RegistryError};
use crate::digest::Digest;
use crate::oci::MEDIA_TYPE_MANIFEST;
use crate::sigstore::{Claim, PAYLOAD_MEDIA_TYPE, PublicKey, SIGNATURE_ANNOTATION, SigningKey};

/// The attachment manifests and payloads are small; larger answers are refused.
const LIMIT: u64 = 4 << 20;
/// Signatures read per image at most (a hostile registry could list thousands).
const MAX_SIGNATURES: usize = 64;

/// The tag holding the signatures of `digest`.
pub fn tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The identity a signature names for an image pushed to `dest`: `HOST/REPO[:TAG]`, as the
/// container tools write it (the digest is in the payload's other half).
pub fn identity(dest: &Reference) -> String {
    match &dest.tag {
        Some(t) => format!("{}/{}:{t}", dest.registry, dest.repository),
        None => format!("{}/{}", dest.registry, dest.repository),
    }
}

/// Signs `manifest` as the image `dest` names and stores the signature in `dest`'s repository.
/// Returns the digest of the attachment manifest.
pub fn attach(
    dest: &Reference,
    manifest: &Digest,
    key: &SigningKey,
    opts: &ClientOptions,
) -> Result<Digest, RegistryError> {
    let client = RegistryClient::new(dest, opts, true, &[])?;
    let claim = Claim {
        manifest_digest: manifest.to_string(),
        reference: identity(dest),
    };
    let (payload, signature) = key.sign(&claim);
    let repo = &dest.repository;
    let tag = tag(manifest);
    let existing = get_json(&client, repo, &format!("manifests/{tag}"))?;
    let stored = existing.as_ref().map(|(_, bytes)| Digest::of(bytes));
    let (mut attachment, mut config) = match existing {
        None => (
            json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "layers": []}),
            json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}),
        ),
        Some((m, _)) => {
            let config_digest = m["config"]["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok())
                .ok_or_else(|| other(dest, &tag, "the signature manifest has no config digest"))?;
            // Checked against its digest like every blob imgbuild reads.
            let bytes = get_blob(&client, repo, &config_digest)?;
            let c = serde_json::from_slice(&bytes).map_err(|e| {
                other(
                    dest,
                    &tag,
                    &format!("the signature config is not JSON: {e}"),
                )
            })?;
            (m, c)
        }
    };
    let payload_digest = Digest::of(&payload);
    let layer = json!({
        "mediaType": PAYLOAD_MEDIA_TYPE,
        "digest": payload_digest,
        "size": payload.len(),
        "annotations": { SIGNATURE_ANNOTATION: signature },
    });
    let layers = attachment["layers"]
        .as_array_mut()
        .ok_or_else(|| other(dest, &tag, "the signature manifest has no layers list"))?;
    if layers.contains(&layer) {
        // Signed before with this key (signatures are deterministic): nothing to add.
        return Ok(stored.unwrap_or_else(|| Digest::of(&crate::canonical::encode(&attachment))));
    }
    put_blob(&client, repo, &payload)?;
    layers.push(layer);
    match config["rootfs"]["diff_ids"].as_array_mut() {
        Some(ids) => ids.push(json!(payload_digest)),
        None => config["rootfs"] = json!({"type": "layers", "diff_ids": [payload_digest]}),
    }
    let config_bytes = crate::canonical::encode(&config);
    put_blob(&client, repo, &config_bytes)?;
    attachment["config"] = json!({
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": Digest::of(&config_bytes),
        "size": config_bytes.len(),
    });
    let body = crate::canonical::encode(&attachment);
    super::push::put_manifest(&client, dest, &tag, MEDIA_TYPE_MANIFEST, &body)?;
    Ok(Digest::of(&body))
}

/// Why an image was not accepted: each signature found and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Unverified {
    #[error(
        "{image} has no sigstore signature (looked for the tag{} {tags})",
        if tags.contains(',') { "s" } else { "" }
    )]
    Unsigned { image: String, tags: String },
    #[error("no signature of {image} verifies with the key: {reasons}")]
    Invalid { image: String, reasons: String },
}

/// Checks that one of the signatures stored for one of `digests` (the manifest, or the index
/// it was chosen from) verifies with `key`, names that digest, and names the image `image`
/// refers to (its repository, and its tag when it is pulled by tag: the container tools'
/// default `matchRepoDigestOrExact`). Returns the digest the accepted signature names.
pub fn verify(
    image: &Reference,
    digests: &[Digest],
    key: &PublicKey,
    opts: &ClientOptions,
) -> Result<Result<Digest, Unverified>, RegistryError> {
    let client = RegistryClient::new(image, opts, false, &[])?;
    let repo = &image.repository;
    let mut reasons = Vec::new();
    let mut found_any = false;
    for digest in digests {
        let Some((attachment, _)) = get_json(&client, repo, &format!("manifests/{}", tag(digest)))?
        else {
            continue;
        };
        found_any = true;
        let layers = attachment["layers"].as_array().cloned().unwrap_or_default();
        for layer in layers.iter().take(MAX_SIGNATURES) {
            if layer["mediaType"] != PAYLOAD_MEDIA_TYPE {
                continue;
            }
            let (Some(sig), Some(payload_digest)) = (
                layer["annotations"][SIGNATURE_ANNOTATION].as_str(),
                layer["digest"].as_str().and_then(|d| Digest::parse(d).ok()),
            ) else {
                reasons.push("a payload without its signature annotation".to_string());
                continue;
            };
            let payload = get_blob(&client, repo, &payload_digest)?;
            match key.verify(&payload, sig) {
                Err(e) => reasons.push(e.to_string()),
                Ok(claim) if claim.manifest_digest != digest.as_str() => reasons.push(format!(
                    "a valid signature of another manifest ({})",
                    claim.manifest_digest
                )),
                Ok(claim) if !names(image, &claim.reference) => reasons.push(format!(
                    "a valid signature of this manifest as `{}`, not `{}`",
                    claim.reference,
                    identity(image)
                )),
                Ok(_) => return Ok(Ok(digest.clone())),
            }
        }
    }
    let image_name = identity(image);
    if !found_any || reasons.is_empty() {
        let tags: Vec<String> = digests.iter().map(tag).collect();
        return Ok(Err(Unverified::Unsigned {
            image: image_name,
            tags: tags.join(", "),
        }));
    }
    reasons.dedup();
    Ok(Err(Unverified::Invalid {
        image: image_name,
        reasons: reasons.join("; "),
    }))
}

/// Does the signed identity `signed` name `image`? Same registry and repository; when the
/// image is pulled by tag (not digest), the same tag too.
fn names(image: &Reference, signed: &str) -> bool {
    let Ok(s) = Reference::parse(signed) else {
        return false;
    };
    if s.registry != image.registry || s.repository != image.repository {
        return false;
    }
    if image.digest.is_some() {
        return true;
    }
    // `Reference::parse` reads a missing tag as `latest`; a signature for the bare repository
    // names no tag at all.
    let last = signed.rsplit('/').next().unwrap_or(signed);
    let explicit_tag = last.split('@').next().unwrap_or(last).contains(':');
    explicit_tag && s.tag == image.tag
}

fn other(dest: &Reference, tag: &str, why: &str) -> RegistryError {
    RegistryError::Other(format!(
        "{}/{}:{tag}: {why}",
        dest.registry, dest.repository
    ))
}

/// GETs `/v2/REPO/PATH` as JSON; `None` on 404.
fn get_json(
    client: &RegistryClient,
    repo: &str,
    path: &str,
) -> Result<Option<(Value, Vec<u8>)>, RegistryError> {
    let url = client.url(&format!("/v2/{repo}/{path}"));
    let resp = client.send("get", Method::GET, &url, &|rb| {
        Ok(rb.header(header::ACCEPT, MEDIA_TYPE_MANIFEST))
    })?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => {
            let bytes = read(resp, &url)?;
            let v = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Other(format!("{url}: not JSON: {e}")))?;
            Ok(Some((v, bytes)))
        }
        _ => Err(status_error("get", &url, resp)),
    }
}

fn read(resp: reqwest::blocking::Response, url: &str) -> Result<Vec<u8>, RegistryError> {
    crate::http::read_limited(resp, LIMIT).map_err(|source| RegistryError::Io {
        action: "read",
        path: url.into(),
        source,
    })
}

/// A small blob, checked against its digest.
fn get_blob(
    client: &RegistryClient,
    repo: &str,
    digest: &Digest,
) -> Result<Vec<u8>, RegistryError> {
    let url = client.url(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = client.send("get blob", Method::GET, &url, &|rb| Ok(rb))?;
    if resp.status() != StatusCode::OK {
        return Err(status_error("get blob", &url, resp));
    }
    let bytes = read(resp, &url)?;
    let found = Digest::of(&bytes);
    if &found != digest {
        return Err(RegistryError::DigestMismatch {
            what: url,
            expected: digest.clone(),
            found,
        });
    }
    Ok(bytes)
}

/// Uploads a small blob in one POST + PUT (skipped when the registry has it).
fn put_blob(client: &RegistryClient, repo: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let digest = Digest::of(bytes);
    let url = client.url(&format!("/v2/{repo}/blobs/{digest}"));
    if client
        .send("check blob", Method::HEAD, &url, &|rb| Ok(rb))?
        .status()
        .is_success()
    {
        return Ok(());
    }
    let start = client.url(&format!("/v2/{repo}/blobs/uploads/"));
    let resp = client.send("start upload at", Method::POST, &start, &|rb| {
        Ok(rb.header(header::CONTENT_LENGTH, 0))
    })?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(status_error("start upload at", &start, resp));
    }
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| client.resolve(l))
        .ok_or_else(|| {
            RegistryError::Other(format!("{start}: the registry gave no upload location"))
        })?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest={digest}");
    let body = bytes.to_vec();
    let resp = client.send("finish upload to", Method::PUT, &put, &|rb| {
        Ok(rb
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone()))
    })?;
    if resp.status() != StatusCode::CREATED {
        return Err(status_error("finish upload to", &put, resp));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_match_by_repository_and_tag_or_digest() {
        let by_tag = Reference::parse("127.0.0.1:5000/base:1").unwrap();
        assert!(names(&by_tag, "127.0.0.1:5000/base:1"));
        assert!(!names(&by_tag, "127.0.0.1:5000/base:2"));
        assert!(!names(&by_tag, "127.0.0.1:5000/base"));
        assert!(!names(&by_tag, "127.0.0.1:5000/other:1"));
        assert!(!names(&by_tag, "127.0.0.2:5000/base:1"));
        let by_digest =
            Reference::parse(&format!("127.0.0.1:5000/base@sha256:{}", "a".repeat(64))).unwrap();
        assert!(names(&by_digest, "127.0.0.1:5000/base:anything"));
        assert!(names(&by_digest, "127.0.0.1:5000/base"));
        assert!(!names(&by_digest, "127.0.0.1:5000/other"));
        let hub = Reference::parse("debian:bookworm").unwrap();
        assert!(names(&hub, "docker.io/library/debian:bookworm"));
        assert_eq!(identity(&hub), "docker.io/library/debian:bookworm");
    }

    #[test]
    fn the_attachment_tag_is_cosigns() {
        let d = Digest::of(b"x");
        assert_eq!(tag(&d), format!("sha256-{}.sig", d.hex()));
    }
}
