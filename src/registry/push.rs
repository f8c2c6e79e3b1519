//! Push: blobs first (HEAD to skip what the registry has, cross-repository mount where we
//! pushed it before, monolithic or chunked upload, in parallel), then the manifest by
//! digest, then the tag.

use std::path::Path;
use std::sync::{Arc, Mutex};

use reqwest::header;
use reqwest::{Method, StatusCode};

use super::client::{RegistryClient, error_message};
use super::upload::Verifier;
use super::{Reference, RegistryError};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::oci::layout::{Desc, Index, Layout, Manifest};
use crate::oci::{ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::report::{Dir, Event, Reporter};

/// Blobs up to this size go in one PUT with the digest.
const MONOLITHIC: u64 = 4 << 20;
/// Larger blobs go in streamed PATCH chunks of up to this size (then an empty PUT). The size
/// weighs two costs: a failure re-sends at most one chunk where the registry keeps the
/// session (64 MiB: under a second at 1 Gbit/s, about 5 s at 100 Mbit/s), and every chunk
/// costs one request round trip (one per 64 MiB is under 1% of the time even at a 50 ms
/// round trip on a 1 Gbit/s link). Registries that take chunks accept this size (ECR wants at
/// least 5 MiB per chunk but the last).
const CHUNK: u64 = 64 << 20;
/// Blobs in flight at once: all layers of a typical image, so none waits for another.
const PARALLEL: usize = 8;

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushOutcome {
    /// What the tag points at: an image manifest or an image index.
    pub manifest: Option<Digest>,
    pub media_type: String,
    /// The image manifests pushed (the one, or each of the index), with their platforms.
    pub images: Vec<Desc>,
    pub uploaded: usize,
    pub mounted: usize,
    pub existing: usize,
    pub bytes: u64,
}

/// Repositories of `registry` the cache remembers holding `digest` (for mounts).
fn known_repos(cache: Option<&Cache>, registry: &str, digest: &Digest) -> Vec<String> {
    let Some(c) = cache else { return Vec::new() };
    let p = c.root().join("pushed").join(digest.hex());
    let prefix = format!("{registry}/");
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn remember(cache: Option<&Cache>, dest: &Reference, digest: &Digest) {
    let Some(c) = cache else { return };
    let p = c.root().join("pushed").join(digest.hex());
    let line = format!("{}/{}", dest.registry, dest.repository);
    let mut lines: Vec<String> = std::fs::read_to_string(&p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    if !lines.contains(&line) {
        lines.push(line);
        let _ = crate::fsutil::write_atomic(&p, (lines.join("\n") + "\n").as_bytes());
    }
}

enum Sent {
    Existing,
    Mounted,
    Uploaded(u64),
}

fn push_blob(
    client: &RegistryClient,
    dest: &Reference,
    layout: &Layout,
    d: &Desc,
    mount_from: &[String],
    reporter: &dyn Reporter,
) -> Result<Sent, RegistryError> {
    let repo = &dest.repository;
    let blob_url = client.url(&format!("/v2/{repo}/blobs/{}", d.digest));
    let resp = client.send("check blob", Method::HEAD, &blob_url, &|rb| Ok(rb))?;
    if resp.status().is_success() {
        return Ok(Sent::Existing);
    }
    let location = match try_mount(client, repo, d, mount_from)? {
        Mount::Done => return Ok(Sent::Mounted),
        Mount::Session(l) => l,
    };
    let up = Upload {
        client,
        verifier: Verifier::new(&layout.blob_path(&d.digest), &d.digest, d.size),
        start_url: client.url(&format!("/v2/{repo}/blobs/uploads/")),
        shown: format!("{}/{}@{}", dest.registry, repo, d.digest.short()),
        reporter,
    };
    let mut location = match location {
        Some(l) => l,
        None => up.start_session()?,
    };
    reporter.report(Event::TransferStart {
        dir: Dir::Up,
        url: &up.shown,
        total: Some(d.size),
    });
    let offset = if d.size > MONOLITHIC {
        up.chunks(d, &mut location)?
    } else {
        0
    };
    up.finish(d, location, offset)?;
    reporter.report(Event::TransferDone {
        dir: Dir::Up,
        url: &up.shown,
        bytes: d.size,
    });
    Ok(Sent::Uploaded(d.size))
}

enum Mount {
    /// The registry mounted the blob from another repository.
    Done,
    /// Not mounted; an upload session it offered instead, if any.
    Session(Option<String>),
}

/// A cross-repository mount from one of `mount_from`: 201 when done; 202 means "no, but here
/// is an upload session".
fn try_mount(
    client: &RegistryClient,
    repo: &str,
    d: &Desc,
    mount_from: &[String],
) -> Result<Mount, RegistryError> {
    for from in mount_from.iter().filter(|f| *f != repo) {
        let url = client.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
            d.digest
        ));
        let resp = client.send("mount blob", Method::POST, &url, &|rb| {
            Ok(rb.header(header::CONTENT_LENGTH, 0))
        })?;
        if resp.status() == StatusCode::CREATED {
            return Ok(Mount::Done);
        }
        if resp.status() == StatusCode::ACCEPTED {
            return Ok(Mount::Session(
                resp.headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| client.resolve(l)),
            ));
        }
    }
    Ok(Mount::Session(None))
}

/// One blob's upload: its file (hashed as it is sent), where sessions start, its name in
/// progress events.
struct Upload<'a> {
    client: &'a RegistryClient,
    verifier: Arc<Verifier>,
    start_url: String,
    shown: String,
    reporter: &'a dyn Reporter,
}

impl Upload<'_> {
    fn start_session(&self) -> Result<String, RegistryError> {
        let resp = self
            .client
            .send("start upload at", Method::POST, &self.start_url, &|rb| {
                Ok(rb.header(header::CONTENT_LENGTH, 0))
            })?;
        upload_location(self.client, resp, "start upload at", &self.start_url)
    }

    /// PATCHes the blob in chunks; after a failure, asks the registry where it stands and
    /// resumes from its `Range`, or starts over when it dropped the session (CNCF
    /// distribution does after a cut PATCH). Returns the bytes sent.
    fn chunks(&self, d: &Desc, location: &mut String) -> Result<u64, RegistryError> {
        let client = self.client;
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < d.size {
            let len = CHUNK.min(d.size - offset);
            let range = format!("{}-{}", offset, offset + len - 1);
            let url = location.clone();
            let result = client.send("upload blob chunk to", Method::PATCH, &url, &|rb| {
                Ok(rb
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_RANGE, range.clone())
                    .timeout(crate::http::upload_timeout(len))
                    .body(self.verifier.body(offset, len)?))
            });
            self.verifier.check()?;
            match result {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    *location = upload_location(client, resp, "upload blob chunk to", &url)?;
                    offset += len;
                    self.reporter.report(Event::TransferProgress {
                        dir: Dir::Up,
                        url: &self.shown,
                        bytes: offset,
                    });
                }
                other => {
                    failures += 1;
                    if failures > 5 {
                        return match other {
                            Ok(resp) => Err(status_error("upload blob chunk to", &url, resp)),
                            Err(e) => Err(e),
                        };
                    }
                    let resp = client.send("query upload", Method::GET, location, &|rb| Ok(rb))?;
                    if resp.status() == StatusCode::NO_CONTENT {
                        offset = resp
                            .headers()
                            .get(header::RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|r| r.rsplit_once('-'))
                            .and_then(|(_, end)| end.parse::<u64>().ok())
                            .map_or(0, |end| end + 1);
                        *location = upload_location(client, resp, "query upload", location)
                            .unwrap_or(location.clone());
                    } else {
                        *location = self.start_session()?;
                        offset = 0;
                    }
                }
            }
        }
        Ok(offset)
    }

    /// The final PUT carries what is left after `offset` (everything, for a monolithic
    /// upload). A session whose PUT failed midway may hold a partial body: a fresh one gets
    /// it again.
    fn finish(&self, d: &Desc, mut location: String, offset: u64) -> Result<(), RegistryError> {
        let rest = d.size - offset;
        let mut sessions = 1;
        loop {
            let sep = if location.contains('?') { '&' } else { '?' };
            let put_url = format!("{location}{sep}digest={}", d.digest);
            let result = self
                .client
                .send("finish upload to", Method::PUT, &put_url, &|rb| {
                    let rb = rb.header(header::CONTENT_TYPE, "application/octet-stream");
                    Ok(if rest > 0 {
                        rb.timeout(crate::http::upload_timeout(rest))
                            .body(self.verifier.body(offset, rest)?)
                    } else {
                        rb.header(header::CONTENT_LENGTH, 0)
                    })
                });
            self.verifier.check()?;
            match result {
                Ok(resp) if resp.status() == StatusCode::CREATED => return Ok(()),
                Ok(resp) if offset > 0 || sessions >= 3 => {
                    return Err(status_error("finish upload to", &put_url, resp));
                }
                Err(e) if offset > 0 || sessions >= 3 => return Err(e),
                _ => {
                    sessions += 1;
                    location = self.start_session()?;
                }
            }
        }
    }
}

fn upload_location(
    client: &RegistryClient,
    resp: reqwest::blocking::Response,
    action: &str,
    url: &str,
) -> Result<String, RegistryError> {
    if !(resp.status() == StatusCode::ACCEPTED || resp.status() == StatusCode::NO_CONTENT) {
        return Err(status_error(action, url, resp));
    }
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| client.resolve(l))
        .ok_or_else(|| RegistryError::Other(format!("{url}: the registry gave no upload location")))
}

pub fn status_error(action: &str, url: &str, resp: reqwest::blocking::Response) -> RegistryError {
    let status = resp.status().as_u16();
    RegistryError::Status {
        action: action.into(),
        url: url.into(),
        status,
        message: error_message(resp),
    }
}

/// Pushes the image tagged `tag` (or the only one) in `layout` to `dest`: an image manifest,
/// or an image index and every manifest it lists.
pub fn push(
    layout_dir: &Path,
    tag: Option<&str>,
    dest: &Reference,
    opts: &super::ClientOptions,
    cache: Option<&Cache>,
    reporter: &dyn Reporter,
) -> Result<PushOutcome, RegistryError> {
    let layout = Layout::open(layout_dir)?;
    let index = layout.index()?;
    let desc = index
        .manifests
        .iter()
        .find(|d| {
            tag.is_none_or(|t| {
                d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t)
            })
        })
        .cloned()
        .ok_or_else(|| {
            RegistryError::Other(format!(
                "{}: no image tagged `{}`",
                layout_dir.display(),
                tag.unwrap_or("")
            ))
        })?;
    let top_bytes = layout.read_blob(&desc.digest)?;
    let images: Vec<Desc> = if desc.media_type == MEDIA_TYPE_INDEX {
        let idx: Index = serde_json::from_slice(&top_bytes).map_err(|e| {
            RegistryError::Other(format!("{}: bad image index: {e}", layout_dir.display()))
        })?;
        idx.manifests
    } else {
        vec![desc.clone()]
    };
    let mut manifests = Vec::new();
    let mut blobs: Vec<Desc> = Vec::new();
    for image in &images {
        let bytes = if image.digest == desc.digest {
            top_bytes.clone()
        } else {
            layout.read_blob(&image.digest)?
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::Other(format!("{}: bad manifest: {e}", layout_dir.display()))
        })?;
        for b in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !blobs.iter().any(|x| x.digest == b.digest) {
                blobs.push(b.clone());
            }
        }
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.into());
        manifests.push((image.digest.clone(), media_type, bytes));
    }
    // Blobs are not hashed before the upload: what the registry already has is skipped by
    // HEAD, and each upload hashes what it sends and stops before the last byte of a blob
    // that does not match its digest (see `upload`); the registry checks it again.
    let mut mount_sources: Vec<String> = blobs
        .iter()
        .flat_map(|b| known_repos(cache, &dest.registry, &b.digest))
        .collect();
    mount_sources.sort();
    mount_sources.dedup();
    mount_sources.retain(|r| r != &dest.repository);
    let client = RegistryClient::new(dest, opts, true, &mount_sources)?;

    let outcome = Mutex::new(PushOutcome::default());
    crate::parallel::try_for_each(&blobs, PARALLEL, |d| {
        let from = known_repos(cache, &dest.registry, &d.digest);
        let sent = push_blob(&client, dest, &layout, d, &from, reporter)?;
        remember(cache, dest, &d.digest);
        if let Ok(mut o) = outcome.lock() {
            match sent {
                Sent::Existing => o.existing += 1,
                Sent::Mounted => o.mounted += 1,
                Sent::Uploaded(n) => {
                    o.uploaded += 1;
                    o.bytes += n;
                }
            }
        }
        Ok::<(), RegistryError>(())
    })?;
    // Every image manifest by digest, then the index by digest (when there is one), then the
    // tag: a tag never points at a partial image.
    let top_type = if desc.media_type == MEDIA_TYPE_INDEX {
        for (digest, media_type, bytes) in &manifests {
            put_manifest(&client, dest, &digest.to_string(), media_type, bytes)?;
        }
        MEDIA_TYPE_INDEX
    } else {
        // The manifest is the top itself (`top_bytes`); its own media type, if it names one.
        manifests[0].1.as_str()
    };
    let mut refs = vec![desc.digest.to_string()];
    refs.extend(dest.tag.clone());
    for r in refs {
        put_manifest(&client, dest, &r, top_type, &top_bytes)?;
    }
    let mut o = outcome.into_inner().unwrap_or_default();
    o.manifest = Some(desc.digest);
    o.media_type = desc.media_type;
    o.images = images;
    Ok(o)
}

/// PUTs a manifest (or index) under `reference` (a digest or a tag) in `dest`'s repository.
pub(super) fn put_manifest(
    client: &RegistryClient,
    dest: &Reference,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let url = client.url(&format!("/v2/{}/manifests/{reference}", dest.repository));
    let body = bytes.to_vec();
    let resp = client.send("put manifest to", Method::PUT, &url, &|rb| {
        Ok(rb
            .header(header::CONTENT_TYPE, media_type)
            .body(body.clone()))
    })?;
    if resp.status() != StatusCode::CREATED {
        return Err(status_error("put manifest to", &url, resp));
    }
    Ok(())
}
