//! The build cache shared through a registry (`--cache-to REF`, `--cache-from REF`): step key ->
//! layer records stored as an OCI artifact in image-manifest form (so any registry takes it),
//! whose config is the record table and whose layers are the layer blobs themselves. A
//! machine with an empty cache imports the records and their blobs and builds nothing that
//! another machine built with the same inputs.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, LayerRecord};
use crate::digest::{Digest, HashingWriter};
use crate::oci::image;
use crate::oci::layout::{Desc, Layout};
use crate::registry::{self, ClientOptions, Reference, RegistryError};
use crate::report::Reporter;

/// The config media type that marks an imgbuild cache artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.imgbuild.cache.config.v1+json";

/// The table format this version writes and the only one it reads.
pub const TABLE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RemoteCacheError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("writing the cache artifact")]
    Layout(#[from] crate::oci::OciError),
    #[error("{reference} is not an imgbuild build cache (its config is `{media_type}`)")]
    NotACache {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: the cache table cannot be read: {message}")]
    BadTable { reference: String, message: String },
    #[error(
        "{reference}: the layer for step {key} does not hold what its record says: diff_id \
         expected {expected}, found {found}; nothing was imported"
    )]
    DiffIdMismatch {
        reference: String,
        key: String,
        expected: Digest,
        found: Digest,
    },
    #[error("{reference}: cannot read the layer {digest} for step {key}; nothing was imported")]
    BadLayer {
        reference: String,
        key: String,
        digest: Digest,
        source: std::io::Error,
    },
    #[error(
        "{reference} was written by another version of imgbuild (cache table version {found}, \
         this one reads {TABLE_VERSION}): export it again with this version"
    )]
    Version { reference: String, found: u32 },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("a temporary directory for the cache artifact")]
    Temp(#[source] std::io::Error),
}

/// The artifact's config: which layer each step key made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    pub version: u32,
    /// Step key (hex) -> layer.
    pub keys: BTreeMap<String, LayerRecord>,
}

/// Pushes `keys` (and their layer blobs, which must be in `cache`) to `dest` as one artifact.
/// Returns the artifact's manifest digest.
pub fn export(
    cache: &Cache,
    keys: &[(Digest, LayerRecord)],
    dest: &Reference,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
) -> Result<Digest, RemoteCacheError> {
    let dir = tempfile::Builder::new()
        .prefix("cache-artifact-")
        .tempdir_in(cache.root().join("tmp"))
        .map_err(RemoteCacheError::Temp)?;
    let layout = Layout::create(dir.path())?;
    let mut table = Table {
        version: TABLE_VERSION,
        keys: BTreeMap::new(),
    };
    let mut layers = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, rec) in keys {
        table.keys.insert(key.hex().to_string(), rec.clone());
        if seen.insert(rec.digest.clone()) {
            layout.put_file(&cache.blob_path(&rec.digest), &rec.digest)?;
            layers.push(Desc {
                media_type: rec.media_type.clone(),
                digest: rec.digest.clone(),
                size: rec.size,
                annotations: Default::default(),
                platform: None,
            });
        }
    }
    let config = layout.put_json(CONFIG_MEDIA_TYPE, &table)?;
    let manifest = image::manifest(config.clone(), layers);
    let desc = layout.put_json(crate::oci::MEDIA_TYPE_MANIFEST, &manifest)?;
    let mut keep: BTreeSet<Digest> = seen;
    keep.insert(config.digest.clone());
    keep.insert(desc.digest.clone());
    let tag = dest.tag.clone().unwrap_or_else(|| "buildcache".into());
    layout.finish(&desc, std::slice::from_ref(&tag), &keep)?;
    let out = registry::push::push(dir.path(), Some(&tag), dest, opts, Some(cache), reporter)?;
    Ok(out.manifest.unwrap_or(desc.digest))
}

/// Imports the records of the artifact at `src` that this cache lacks, with their blobs.
/// Returns how many keys were imported. A missing artifact (nothing exported yet) imports
/// nothing.
pub fn import(
    cache: &Cache,
    src: &Reference,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
) -> Result<usize, RemoteCacheError> {
    if registry::pull::remote_digest(src, opts)?.is_none() {
        return Ok(0);
    }
    let (manifest, config) = registry::pull::manifest_and_config(src, opts, cache, reporter)?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(RemoteCacheError::NotACache {
            reference: src.to_string(),
            media_type: manifest.config.media_type,
        });
    }
    let table: Table = serde_json::from_slice(&config).map_err(|e| RemoteCacheError::BadTable {
        reference: src.to_string(),
        message: e.to_string(),
    })?;
    if table.version != TABLE_VERSION {
        return Err(RemoteCacheError::Version {
            reference: src.to_string(),
            found: table.version,
        });
    }
    let mut wanted: Vec<(Digest, LayerRecord)> = Vec::new();
    for (k, rec) in table.keys {
        let key =
            Digest::parse(&format!("sha256:{k}")).map_err(|e| RemoteCacheError::BadTable {
                reference: src.to_string(),
                message: e.to_string(),
            })?;
        // Only what the artifact itself carries can be trusted to be fetchable.
        if cache.get_key(&key).is_none() && manifest.layers.iter().any(|l| l.digest == rec.digest) {
            wanted.push((key, rec));
        }
    }
    let mut digests: Vec<Digest> = wanted.iter().map(|(_, r)| r.digest.clone()).collect();
    digests.sort();
    digests.dedup();
    registry::pull::blobs(src, opts, cache, &digests, reporter)?;
    // Whoever can push to the cache reference chooses the layer for a key (as with BuildKit's
    // registry cache), but a record that lies about its layer's content is refused: each
    // layer is decompressed and hashed against the diff_id it claims, before any key is kept.
    let mut checked: BTreeMap<Digest, Digest> = BTreeMap::new();
    for (key, rec) in &wanted {
        let found = match checked.get(&rec.digest) {
            Some(d) => d.clone(),
            None => {
                let bad = |source| RemoteCacheError::BadLayer {
                    reference: src.to_string(),
                    key: key.hex().to_string(),
                    digest: rec.digest.clone(),
                    source,
                };
                let f = std::fs::File::open(cache.blob_path(&rec.digest)).map_err(bad)?;
                let mut tar = crate::layer::decompressed(f, &rec.media_type).map_err(bad)?;
                let mut w = HashingWriter::new(std::io::sink());
                std::io::copy(&mut tar, &mut w).map_err(bad)?;
                let (_, d, _) = w.finish();
                checked.insert(rec.digest.clone(), d.clone());
                d
            }
        };
        if found != rec.diff_id {
            return Err(RemoteCacheError::DiffIdMismatch {
                reference: src.to_string(),
                key: key.hex().to_string(),
                expected: rec.diff_id.clone(),
                found,
            });
        }
    }
    for (key, rec) in &wanted {
        cache.put_key(key, rec)?;
    }
    Ok(wanted.len())
}
