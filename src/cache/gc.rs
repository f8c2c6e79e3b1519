//! Keeping the cache small: what is in it ([`inventory`]), least-recently-used eviction down to
//! a size ([`gc`]), and removal of what was not used for a while ([`prune`]).
//!
//! "Used" is a file's mtime: a key hit and a blob lookup set it to now ([`touch`]). A key and
//! its layer blob go together; a blob that a kept key names is never removed. Both commands
//! run on a cache opened with [`super::Cache::open_exclusive`], so no build is running, and they
//! also clear `tmp/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Cache, CacheError, LayerRecord, io_err};

/// Marks `path` as used now (best effort: a read-only cache still works).
pub(crate) fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// One step key and the layer it names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyEntry {
    pub key: String,
    pub record: LayerRecord,
    /// Seconds since the key was last used.
    pub age_secs: u64,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    used: SystemTime,
}

/// A blob of the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlobEntry {
    pub digest: String,
    pub size: u64,
    pub age_secs: u64,
    /// Whether a step key names it (a layer) or not (a download, a .deb, a base image blob).
    pub layer: bool,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    used: SystemTime,
}

/// What the cache holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Inventory {
    pub keys: Vec<KeyEntry>,
    pub blobs: Vec<BlobEntry>,
    /// Bytes of all blobs.
    pub size: u64,
}

/// What `gc` or `prune` removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Removed {
    pub keys: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub size_before: u64,
    pub size_after: u64,
}

fn age(now: SystemTime, t: SystemTime) -> u64 {
    now.duration_since(t).map_or(0, |d| d.as_secs())
}

/// Lists the keys and blobs, oldest use first.
pub fn inventory(cache: &Cache) -> Result<Inventory, CacheError> {
    let now = SystemTime::now();
    let mut keys = Vec::new();
    let kdir = cache.root.join("keys");
    for e in fs::read_dir(&kdir).map_err(io_err("list", &kdir))? {
        let e = e.map_err(io_err("list", &kdir))?;
        let path = e.path();
        let Some(key) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .map(str::to_string)
        else {
            continue;
        };
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(record) = serde_json::from_slice::<LayerRecord>(&bytes) else {
            continue;
        };
        let used = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        keys.push(KeyEntry {
            key,
            record,
            age_secs: age(now, used),
            path,
            used,
        });
    }
    keys.sort_by_key(|k| k.used);
    let named: BTreeSet<String> = keys
        .iter()
        .map(|k| k.record.digest.hex().to_string())
        .collect();
    let mut blobs = Vec::new();
    let bdir = cache.root.join("blobs/sha256");
    for e in fs::read_dir(&bdir).map_err(io_err("list", &bdir))? {
        let e = e.map_err(io_err("list", &bdir))?;
        let Ok(m) = e.metadata() else { continue };
        let hex = e.file_name().to_string_lossy().into_owned();
        let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        blobs.push(BlobEntry {
            layer: named.contains(&hex),
            digest: format!("sha256:{hex}"),
            size: m.len(),
            age_secs: age(now, used),
            path: e.path(),
            used,
        });
    }
    blobs.sort_by_key(|b| b.used);
    let size = blobs.iter().map(|b| b.size).sum();
    Ok(Inventory { keys, blobs, size })
}

/// Something `gc` can remove: a key (with its blob once no kept key names it) or a blob that
/// no key names.
enum Unit<'a> {
    Key(&'a KeyEntry),
    Blob(&'a BlobEntry),
}

/// Removes least recently used keys and loose blobs until the blobs take at most `max_size`
/// bytes. A blob a kept key names is never removed.
pub fn gc(cache: &Cache, max_size: u64) -> Result<Removed, CacheError> {
    clear_tmp(cache)?;
    let inv = inventory(cache)?;
    let mut units: Vec<(SystemTime, Unit)> = inv
        .keys
        .iter()
        .map(|k| (k.used, Unit::Key(k)))
        .chain(
            inv.blobs
                .iter()
                .filter(|b| !b.layer)
                .map(|b| (b.used, Unit::Blob(b))),
        )
        .collect();
    units.sort_by_key(|(t, _)| *t);
    let by_hex: BTreeMap<&str, &BlobEntry> = inv
        .blobs
        .iter()
        .map(|b| (b.digest.trim_start_matches("sha256:"), b))
        .collect();
    // How many kept keys name each layer blob.
    let mut refs: BTreeMap<String, usize> = BTreeMap::new();
    for k in &inv.keys {
        *refs.entry(k.record.digest.hex().to_string()).or_default() += 1;
    }
    let mut out = Removed {
        size_before: inv.size,
        ..Removed::default()
    };
    let mut size = inv.size;
    for (_, unit) in units {
        if size <= max_size {
            break;
        }
        match unit {
            Unit::Key(k) => {
                remove(&k.path)?;
                out.keys += 1;
                let hex = k.record.digest.hex().to_string();
                let n = refs.entry(hex.clone()).or_default();
                *n = n.saturating_sub(1);
                if *n == 0
                    && let Some(b) = by_hex.get(hex.as_str())
                {
                    remove_blob(&b.path)?;
                    out.blobs += 1;
                    out.bytes += b.size;
                    size -= b.size;
                }
            }
            Unit::Blob(b) => {
                remove_blob(&b.path)?;
                out.blobs += 1;
                out.bytes += b.size;
                size -= b.size;
            }
        }
    }
    out.size_after = size;
    Ok(out)
}

/// Removes keys, loose blobs and file hashes not used for `older_than`; a blob a kept key
/// names stays.
pub fn prune(cache: &Cache, older_than: Duration) -> Result<Removed, CacheError> {
    clear_tmp(cache)?;
    let inv = inventory(cache)?;
    let limit = older_than.as_secs();
    let mut out = Removed {
        size_before: inv.size,
        ..Removed::default()
    };
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for k in &inv.keys {
        if k.age_secs >= limit {
            remove(&k.path)?;
            out.keys += 1;
        } else {
            kept.insert(k.record.digest.hex().to_string());
        }
    }
    let mut size = inv.size;
    for b in &inv.blobs {
        let hex = b.digest.trim_start_matches("sha256:");
        if kept.contains(hex) {
            continue;
        }
        // A layer blob goes with its last key; any other blob by its own last use.
        if b.layer || b.age_secs >= limit {
            remove_blob(&b.path)?;
            out.blobs += 1;
            out.bytes += b.size;
            size -= b.size;
        }
    }
    let now = SystemTime::now();
    for bucket in ["hashes", "facts", "plans", "stat", "trees"] {
        let dir = cache.root.join(bucket);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let used = e.metadata().and_then(|m| m.modified());
            if used.is_ok_and(|t| age(now, t) >= limit) {
                remove(&e.path())?;
            }
        }
    }
    out.size_after = size;
    Ok(out)
}

/// A blob (`ROOT/blobs/sha256/HEX`) and its stamp (`ROOT/stamps/HEX`).
fn remove_blob(path: &Path) -> Result<(), CacheError> {
    remove(path)?;
    if let (Some(root), Some(name)) = (path.ancestors().nth(3), path.file_name()) {
        remove(&root.join("stamps").join(name))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Leftover temp files of interrupted builds (none runs: the cache is locked exclusively).
fn clear_tmp(cache: &Cache) -> Result<(), CacheError> {
    let tmp = cache.root.join("tmp");
    for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
        let p = e.path();
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(io_err("remove", &p))?;
    }
    Ok(())
}
