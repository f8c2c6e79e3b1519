//! The content-addressed cache: blobs by digest and step key -> layer records.
//!
//! Layout under the cache root (`$IMGBUILD_CACHE`, `--cache-dir`, or `$XDG_CACHE_HOME/imgbuild`):
//!
//! | bucket                  | holds                                                          |
//! |-------------------------|----------------------------------------------------------------|
//! | `blobs/sha256/<hex>`    | layer blobs, base image blobs and downloads, named by digest   |
//! | `keys/<hex>.json`       | a [`LayerRecord`] per step cache key                           |
//! | `hashes/<hex>`          | sha256 of an input file, keyed by its path, inode, size, times |
//! | `stamps/<hex>`          | a blob's inode, size, mtime and ctime when it was last hashed  |
//! | `facts/<hex>`           | what was read out of blobs, by the digest of what it was read  |
//! |                         | from (the base image's installed packages, for the SBOM)       |
//! | `plans/<hex>.json`       | the plan of a recipe's last build here (per platform), so the  |
//! |                         | next plan can say why a step misses (`plan::explain`)          |
//! | `stat/<hex>`            | a copied directory's stat cache: each file's stat -> sha256    |
//! |                         | (see [`crate::srctree`]), by the directory's path              |
//! | `trees/<hex>`           | a copied directory's listing, named by its digest (the input  |
//! |                         | of its step's key), so `plan --explain` can name changed files |
//! | `tmp/`                  | temp files, renamed into the buckets above when complete       |
//! | `lock`                  | builds hold it shared, `cache gc`/`prune` exclusively ([`gc`]) |
//!
//! Every write is a temp file plus a rename, so a reader never sees a partial blob and two
//! builds sharing one cache only ever race to rename identical content into place. Blobs are
//! hashed while written ([`BlobWriter`]) and refused when the digest is not the one expected.
//! A blob used again is trusted while its stamp holds ([`Cache::check_blob`]: a truncated,
//! rewritten or replaced file changes its size, ctime or inode) and hashed again otherwise;
//! `imgbuild cache verify` hashes every blob, as `git fsck` does.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use crate::digest::{Digest, HashingWriter, digest_reader};
use crate::fsutil;

pub mod gc;

/// What the cache stores for a step key: the layer it produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    /// Size of the uncompressed tar.
    #[serde(default)]
    pub tar_size: u64,
    pub media_type: String,
    pub created_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        found: Digest,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError + use<> {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// Handle on a cache directory. While any handle from [`Cache::open`] lives, the cache is
/// locked shared: `gc` and `prune` ([`Cache::open_exclusive`]) wait for running builds, and
/// builds wait for them.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    _lock: std::sync::Arc<File>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`, locked shared.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        Self::open_locked(root, false)
    }

    /// Opens the cache at `root` for `gc` and `prune`: locked exclusively, so no build runs
    /// while blobs are removed (this waits for running builds to finish).
    pub fn open_exclusive(root: &Path) -> Result<Self, CacheError> {
        Self::open_exclusive_with(root, &|| {})
    }

    /// Like [`Cache::open_exclusive`], calling `waiting` once if a build holds the cache, so
    /// the caller can say why nothing happens.
    pub fn open_exclusive_with(root: &Path, waiting: &dyn Fn()) -> Result<Self, CacheError> {
        Self::open_locked_with(root, true, waiting)
    }

    fn open_locked(root: &Path, exclusive: bool) -> Result<Self, CacheError> {
        Self::open_locked_with(root, exclusive, &|| {})
    }

    fn open_locked_with(
        root: &Path,
        exclusive: bool,
        waiting: &dyn Fn(),
    ) -> Result<Self, CacheError> {
        for sub in [
            "blobs/sha256",
            "keys",
            "hashes",
            "facts",
            "plans",
            "stat",
            "trees",
            "tmp",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create cache directory", &p))?;
        }
        let path = root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open the cache lock", &path))?;
        let tried = if exclusive {
            f.try_lock()
        } else {
            f.try_lock_shared()
        };
        match tried {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting();
                if exclusive { f.lock() } else { f.lock_shared() }
                    .map_err(io_err("lock", &path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        Ok(Cache {
            root: root.to_path_buf(),
            _lock: std::sync::Arc::new(f),
        })
    }

    /// The default location: `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
    pub fn default_root() -> PathBuf {
        if let Some(x) = &crate::settings::get().xdg_cache_home {
            return x.join("imgbuild");
        }
        crate::fsutil::home_dir().join(".cache").join("imgbuild")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is here. Nothing is checked or marked: whoever uses it calls
    /// [`Cache::check_blob`] first, which does both once.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Hashes a cached blob and compares it with its name. A blob that fails is removed, so
    /// the next use fetches or rebuilds it; the error says which blob it was.
    pub fn verify_blob(&self, digest: &Digest) -> Result<u64, CacheError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(io_err("open cached blob", &path))?;
        let (found, size) = digest_reader(BufReader::with_capacity(1 << 20, f))
            .map_err(io_err("read cached blob", &path))?;
        if &found != digest {
            let _ = fs::remove_file(&path);
            return Err(CacheError::DigestMismatch {
                what: path.display().to_string(),
                expected: digest.clone(),
                found,
            });
        }
        Ok(size)
    }

    fn stamp_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("stamps").join(digest.hex())
    }

    /// A blob as it is on disk now: inode, size, mtime and ctime (to the nanosecond).
    fn stamp_of(path: &Path) -> io::Result<(String, u64)> {
        let md = fs::metadata(path)?;
        Ok((stat_stamp(&md), md.len()))
    }

    /// Records that blob `digest` was hashed as it is now.
    fn record_stamp(&self, digest: &Digest) {
        let path = self.blob_path(digest);
        if let Ok((stamp, _)) = Self::stamp_of(&path) {
            let _ = fsutil::write_atomic(&self.stamp_path(digest), stamp.as_bytes());
        }
    }

    /// A cached blob about to be used: trusted when it is still the file that was hashed
    /// (same inode, size, mtime and ctime as its stamp), hashed again otherwise (and removed
    /// when it no longer matches its name). Marks it used now (for `gc` and `prune`) and
    /// returns its size. No O(size) work for a blob that did not change.
    pub fn check_blob(&self, digest: &Digest) -> Result<u64, CacheError> {
        let path = self.blob_path(digest);
        let (now, size) = Self::stamp_of(&path).map_err(io_err("stat cached blob", &path))?;
        let recorded = fs::read_to_string(self.stamp_path(digest)).unwrap_or_default();
        let size = if recorded == now {
            size
        } else {
            self.verify_blob(digest)?
        };
        // The use time is the blob's mtime: the stamp follows it.
        gc::touch(&path);
        self.record_stamp(digest);
        Ok(size)
    }

    /// Hashes every blob (`imgbuild cache verify`): the digests of those that did not match
    /// their names, which are removed (their next use fetches or rebuilds them), and how
    /// many blobs were read.
    pub fn verify_all(&self) -> Result<(usize, Vec<CacheError>), CacheError> {
        let dir = self.root.join("blobs/sha256");
        let mut names: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        names.sort();
        let mut bad = Vec::new();
        let mut n = 0;
        for name in names {
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            n += 1;
            match self.verify_blob(&digest) {
                Ok(_) => self.record_stamp(&digest),
                Err(e) => {
                    let _ = fs::remove_file(self.stamp_path(&digest));
                    bad.push(e);
                }
            }
        }
        Ok((n, bad))
    }

    /// Starts writing a new blob; [`BlobWriter::commit`] names it by its digest.
    pub fn blob_writer(&self) -> Result<BlobWriter, CacheError> {
        let mut w = BlobWriter::create(&self.root.join("tmp"), &self.root.join("blobs/sha256"))?;
        w.stamps = Some(self.root.join("stamps"));
        Ok(w)
    }

    /// Streams `reader` (a download, a pulled blob) into the cache as blob `expected`, calling
    /// `progress` with the bytes received so far. Nothing is stored unless the content
    /// matches; `source` names the stream in errors.
    pub fn store_stream(
        &self,
        reader: &mut dyn io::Read,
        expected: &Digest,
        source: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CacheError> {
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("receive", Path::new(source))(e)),
            };
            w.write_all(&buf[..n])
                .map_err(io_err("store", &self.root))?;
            total += n as u64;
            progress(total);
        }
        w.commit(Some(expected))?;
        Ok(total)
    }

    /// Copies a file into the cache, checking it against `expected`.
    pub fn import_file(&self, src: &Path, expected: &Digest) -> Result<u64, CacheError> {
        if self.has_blob(expected) {
            return self.check_blob(expected);
        }
        let mut f = File::open(src).map_err(io_err("open", src))?;
        let mut w = self.blob_writer()?;
        io::copy(&mut f, &mut w).map_err(io_err("read", src))?;
        let (_, size) = w.commit(Some(expected))?;
        Ok(size)
    }

    /// The sha256 and size of an input file, remembered across builds: a file whose path,
    /// device, inode, size, mtime and ctime are unchanged is not read again. (ctime changes on
    /// every write, even one that restores the mtime.)
    pub fn file_digest(&self, path: &Path) -> Result<(Digest, u64), CacheError> {
        let (abs, md, memo) = self.file_memo(path)?;
        if let Some(d) = fs::read_to_string(&memo)
            .ok()
            .and_then(|s| Digest::parse(s.trim()).ok())
        {
            return Ok((d, md.len()));
        }
        let f = File::open(&abs).map_err(io_err("open", path))?;
        let (digest, size) =
            digest_reader(BufReader::with_capacity(1 << 20, f)).map_err(io_err("read", path))?;
        fsutil::write_atomic(&memo, digest.as_str().as_bytes()).map_err(io_err("write", &memo))?;
        Ok((digest, size))
    }

    /// Records that the file at `path`, as it is now, has `digest` (it was just hashed while
    /// written), so [`Cache::file_digest`] does not read it again.
    pub fn remember_file_digest(&self, path: &Path, digest: &Digest) -> Result<(), CacheError> {
        let (_, _, memo) = self.file_memo(path)?;
        fsutil::write_atomic(&memo, digest.as_str().as_bytes()).map_err(io_err("write", &memo))
    }

    /// The file's canonical path, its metadata, and where its digest is remembered (keyed by
    /// path, device, inode, size, mtime and ctime).
    fn file_memo(&self, path: &Path) -> Result<(PathBuf, fs::Metadata, PathBuf), CacheError> {
        use std::os::unix::fs::MetadataExt;
        let abs = path.canonicalize().map_err(io_err("resolve", path))?;
        let md = fs::metadata(&abs).map_err(io_err("stat", path))?;
        let stamp = format!("{}\0{}:{}", abs.display(), md.dev(), stat_stamp(&md));
        let memo = self
            .root
            .join("hashes")
            .join(Digest::of(stamp.as_bytes()).hex());
        Ok((abs, md, memo))
    }

    /// A fact recorded under `key` (see the `facts/` bucket), if any.
    pub fn fact(&self, key: &Digest) -> Option<Vec<u8>> {
        fs::read(self.root.join("facts").join(key.hex())).ok()
    }

    /// Records a fact under `key`: the digest of the inputs it was derived from.
    pub fn put_fact(&self, key: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.root.join("facts").join(key.hex());
        fsutil::write_atomic(&path, bytes).map_err(io_err("write", &path))
    }

    /// The plan recorded under `id` by the last build of a recipe (see the `plans/` bucket).
    pub fn plan_record(&self, id: &Digest) -> Option<Vec<u8>> {
        fsutil::read_bounded(&self.plan_path(id), 64 << 20).ok()
    }

    /// Records the plan of a build under `id` (unless the same bytes are there already).
    pub fn put_plan_record(&self, id: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.plan_path(id);
        if self.plan_record(id).as_deref() == Some(bytes) {
            // Marked as used (what `prune` goes by), not rewritten.
            if let Ok(f) = File::options().write(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(());
        }
        fsutil::write_atomic(&path, bytes).map_err(io_err("write", &path))
    }

    /// The stat cache of a copied directory (see the `stat/` bucket).
    pub fn stat_index(&self, id: &Digest) -> Option<Vec<u8>> {
        fs::read(self.root.join("stat").join(id.hex())).ok()
    }

    pub fn put_stat_index(&self, id: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.root.join("stat").join(id.hex());
        fsutil::write_atomic(&path, bytes).map_err(io_err("write", &path))
    }

    /// A copied directory's listing by its digest (see the `trees/` bucket), checked.
    pub fn tree_listing(&self, digest: &Digest) -> Option<Vec<u8>> {
        let bytes = fs::read(self.root.join("trees").join(digest.hex())).ok()?;
        (Digest::of(&bytes) == *digest).then_some(bytes)
    }

    /// Stores a listing under its digest (a present one is only marked used).
    pub fn put_tree_listing(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        let digest = Digest::of(bytes);
        let path = self.root.join("trees").join(digest.hex());
        if path.exists() {
            gc::touch(&path);
        } else {
            fsutil::write_atomic(&path, bytes).map_err(io_err("write", &path))?;
        }
        Ok(digest)
    }

    fn plan_path(&self, id: &Digest) -> PathBuf {
        self.root.join("plans").join(format!("{}.json", id.hex()))
    }

    fn key_path(&self, key: &Digest) -> PathBuf {
        self.root.join("keys").join(format!("{}.json", key.hex()))
    }

    /// Looks a step key up. A record whose blob is gone counts as a miss. A hit marks the key
    /// as used now (its file's mtime), which is what `gc` and `prune` go by.
    pub fn get_key(&self, key: &Digest) -> Option<LayerRecord> {
        let path = self.key_path(key);
        let bytes = fs::read(&path).ok()?;
        let rec: LayerRecord = serde_json::from_slice(&bytes).ok()?;
        let hit = self.has_blob(&rec.digest);
        if hit {
            gc::touch(&path);
        }
        hit.then_some(rec)
    }

    /// Whether a step key is a hit, without marking it used (for `plan`'s explanations).
    pub fn has_key(&self, key: &Digest) -> bool {
        fs::read(self.key_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok())
            .is_some_and(|rec| self.has_blob(&rec.digest))
    }

    pub fn put_key(&self, key: &Digest, rec: &LayerRecord) -> Result<(), CacheError> {
        let path = self.key_path(key);
        let bytes = serde_json::to_vec_pretty(rec)
            .map_err(io::Error::other)
            .map_err(io_err("encode cache record", &path))?;
        fsutil::write_atomic(&path, &bytes).map_err(io_err("write cache record", &path))
    }

    pub fn remove_key(&self, key: &Digest) {
        let _ = fs::remove_file(self.key_path(key));
    }
}

/// What tells a file's content changed without reading it: inode, size, mtime and ctime (to
/// the nanosecond; ctime moves on every write, even one that puts the mtime back).
fn stat_stamp(md: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {} {}.{} {}.{}",
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    )
}

/// A blob being written: hashed as it is written, renamed to `DIR/<hex>` by
/// [`BlobWriter::commit`], dropped (and its temp file deleted) otherwise.
pub struct BlobWriter {
    inner: HashingWriter<io::BufWriter<NamedTempFile>>,
    tmp_dir: PathBuf,
    dest_dir: PathBuf,
    /// Where the cache keeps blob stamps: the committed blob was hashed just now.
    stamps: Option<PathBuf>,
}

impl BlobWriter {
    /// A blob with its temp file in `tmp_dir`, to be named in `dest_dir` (same filesystem).
    pub fn create(tmp_dir: &Path, dest_dir: &Path) -> Result<Self, CacheError> {
        fs::create_dir_all(dest_dir).map_err(io_err("create blob directory", dest_dir))?;
        let tmp = fsutil::temp_in(tmp_dir).map_err(io_err("create temp file in", tmp_dir))?;
        Ok(BlobWriter {
            inner: HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp)),
            tmp_dir: tmp_dir.to_path_buf(),
            dest_dir: dest_dir.to_path_buf(),
            stamps: None,
        })
    }

    /// Finishes the blob. With `expected`, a different digest is refused and nothing is kept.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), CacheError> {
        let (buf, digest, size) = self.inner.finish();
        let tmp_dir = self.tmp_dir;
        let tmp = buf.into_inner().map_err(|e| CacheError::Io {
            action: "write temp file in",
            path: tmp_dir.clone(),
            source: e.into_error(),
        })?;
        if let Some(exp) = expected
            && exp != &digest
        {
            return Err(CacheError::DigestMismatch {
                what: "blob".into(),
                expected: exp.clone(),
                found: digest,
            });
        }
        tmp.as_file()
            .sync_data()
            .map_err(io_err("sync temp file in", &tmp_dir))?;
        let dest = self.dest_dir.join(digest.hex());
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            action: "store blob",
            path: dest.clone(),
            source: e.error,
        })?;
        if let Some(dir) = &self.stamps
            && let Ok((stamp, _)) = Cache::stamp_of(&dest)
        {
            let _ = fsutil::write_atomic(&dir.join(digest.hex()), stamp.as_bytes());
        }
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_hashed_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let f = dir.path().join("input");
        fs::write(&f, b"hello").unwrap();
        let (d, n) = cache.file_digest(&f).unwrap();
        assert_eq!((d.clone(), n), (Digest::of(b"hello"), 5));
        // Prove the second call does not read the file: doctor the memo, get it back.
        let memos: Vec<_> = fs::read_dir(dir.path().join("cache/hashes"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(memos.len(), 1);
        let fake = Digest::of(b"memo");
        fs::write(memos[0].path(), fake.as_str()).unwrap();
        assert_eq!(cache.file_digest(&f).unwrap().0, fake);
        // Any write changes the stamp (ctime), and the file is hashed again.
        fs::write(&f, b"hellp").unwrap();
        assert_eq!(cache.file_digest(&f).unwrap().0, Digest::of(b"hellp"));
    }
}
