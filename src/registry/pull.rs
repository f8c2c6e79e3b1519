//! Pull: resolve a reference to the manifest for our platform and bring its config and layer
//! blobs into the cache (verified, each fetched once, in parallel).

use oci_spec::image::ImageConfiguration;
use reqwest::{Method, StatusCode, header};

use super::client::RegistryClient;
use super::push::status_error;
use super::{ClientOptions, Reference, RegistryError, oci_layer_type};
use crate::base::BaseImage;
use crate::cache::{Cache, CacheError, LayerRecord};
use crate::digest::Digest;
use crate::oci::layout::{Index, Manifest};
use crate::report::Reporter;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

fn get_manifest(
    client: &RegistryClient,
    r: &Reference,
    reference: &str,
) -> Result<(Vec<u8>, String, Digest), RegistryError> {
    let url = client.url(&format!("/v2/{}/manifests/{reference}", r.repository));
    let resp = client.send("get manifest", Method::GET, &url, &|rb| {
        Ok(rb.header(header::ACCEPT, ACCEPT))
    })?;
    if resp.status() != StatusCode::OK {
        return Err(status_error("get manifest", &url, resp));
    }
    let media_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Registries need not take manifests over 4 MiB (distribution spec): neither do we.
    let bytes = crate::http::read_limited(resp, 4 << 20).map_err(|source| RegistryError::Io {
        action: "read manifest",
        path: url.clone().into(),
        source,
    })?;
    let digest = Digest::of(&bytes);
    if let Ok(expected) = Digest::parse(reference)
        && expected != digest
    {
        return Err(RegistryError::DigestMismatch {
            what: url,
            expected,
            found: digest,
        });
    }
    Ok((bytes, media_type, digest))
}

fn fetch_blob(
    client: &RegistryClient,
    cache: &Cache,
    r: &Reference,
    digest: &Digest,
    reporter: &dyn Reporter,
) -> Result<(), RegistryError> {
    if cache.has_blob(digest) && cache.check_blob(digest).is_ok() {
        return Ok(());
    }
    let url = client.url(&format!("/v2/{}/blobs/{digest}", r.repository));
    let mut resp = client.send("get blob", Method::GET, &url, &|rb| Ok(rb))?;
    if resp.status() != StatusCode::OK {
        return Err(status_error("get blob", &url, resp));
    }
    let shown = format!("{}/{}@{}", r.registry, r.repository, digest.short());
    let size = resp.content_length();
    match crate::http::store_reporting(cache, &mut resp, size, digest, &shown, reporter) {
        Ok(_) => {}
        Err(CacheError::DigestMismatch {
            expected, found, ..
        }) => {
            return Err(RegistryError::DigestMismatch {
                what: url,
                expected,
                found,
            });
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The digest of the manifest `r` names in its registry, or `None` when it has none (404):
/// what a rebuild compares its result with before pushing.
pub fn remote_digest(r: &Reference, opts: &ClientOptions) -> Result<Option<Digest>, RegistryError> {
    let client = RegistryClient::new(r, opts, false, &[])?;
    let url = client.url(&format!(
        "/v2/{}/manifests/{}",
        r.repository,
        r.manifest_ref()
    ));
    let resp = client.send("look up manifest", Method::HEAD, &url, &|rb| {
        Ok(rb.header(header::ACCEPT, ACCEPT))
    })?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => {
            let header = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok());
            match header {
                Some(d) => Ok(Some(d)),
                // No digest header: fetch the manifest and hash it.
                None => get_manifest(&client, r, &r.manifest_ref()).map(|(_, _, d)| Some(d)),
            }
        }
        _ => Err(status_error("look up manifest", &url, resp)),
    }
}

/// Fetches the image manifest `r` names and its config blob (into the cache, verified):
/// for artifacts such as the remote build cache, where no platform is chosen.
pub fn manifest_and_config(
    r: &Reference,
    opts: &ClientOptions,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<(Manifest, Vec<u8>), RegistryError> {
    let client = RegistryClient::new(r, opts, false, &[])?;
    let (bytes, _, _) = get_manifest(&client, r, &r.manifest_ref())?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Other(format!("{r}: bad manifest: {e}")))?;
    fetch_blob(&client, cache, r, &manifest.config.digest, reporter)?;
    let path = cache.blob_path(&manifest.config.digest);
    let config = std::fs::read(&path).map_err(|source| RegistryError::Io {
        action: "read",
        path,
        source,
    })?;
    Ok((manifest, config))
}

/// Fetches blobs of repository `r` into the cache (verified, in parallel, each once).
pub fn blobs(
    r: &Reference,
    opts: &ClientOptions,
    cache: &Cache,
    digests: &[Digest],
    reporter: &dyn Reporter,
) -> Result<(), RegistryError> {
    let client = RegistryClient::new(r, opts, false, &[])?;
    crate::parallel::try_for_each(digests, 4, |d| fetch_blob(&client, cache, r, d, reporter))
}

/// Pulls `r` for `platform` (`os/arch`) into the cache. With `key`, the image must carry a
/// sigstore signature by it (on its manifest or on the index it was chosen from), checked
/// before any layer is fetched.
pub fn pull(
    r: &Reference,
    platform: &str,
    key: Option<&crate::sigstore::PublicKey>,
    cache: &Cache,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
) -> Result<BaseImage, RegistryError> {
    let client = RegistryClient::new(r, opts, false, &[])?;
    let (mut bytes, mut media_type, mut digest) = get_manifest(&client, r, &r.manifest_ref())?;
    let mut signed = vec![digest.clone()];
    if is_index(&media_type) {
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Other(format!("{r}: bad image index: {e}")))?;
        let d = index
            .for_platform(platform)
            .ok_or_else(|| RegistryError::Other(format!("{r} has no image for {platform}")))?;
        (bytes, media_type, digest) = get_manifest(&client, r, d.digest.as_str())?;
        signed.insert(0, digest.clone());
    }
    if let Some(key) = key {
        super::signatures::verify(r, &signed, key, opts)??;
    }
    let _ = media_type;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Other(format!("{r}: bad manifest: {e}")))?;
    fetch_blob(&client, cache, r, &manifest.config.digest, reporter)?;
    let config_bytes =
        std::fs::read(cache.blob_path(&manifest.config.digest)).map_err(|source| {
            RegistryError::Io {
                action: "read",
                path: cache.blob_path(&manifest.config.digest),
                source,
            }
        })?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| RegistryError::Other(format!("{r}: bad image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Other(format!(
            "{r}: config lists {} diff_ids for {} layers",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }

    crate::parallel::try_for_each(&manifest.layers, 4, |l| {
        fetch_blob(&client, cache, r, &l.digest, reporter)
    })?;
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
        layers.push(LayerRecord {
            digest: l.digest.clone(),
            diff_id: Digest::parse(&diff_id)
                .map_err(|e| RegistryError::Other(format!("{r}: {e}")))?,
            size: l.size,
            tar_size: 0,
            media_type: oci_layer_type(&l.media_type).to_string(),
            created_by: "base".into(),
        });
    }
    Ok(BaseImage {
        digest: Some(digest),
        layers,
        config: Some(config),
    })
}
