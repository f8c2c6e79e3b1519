//! A project directory as a `[[copy]]` step reads it: walked in path order without what its
//! excludes name, each file's sha256 from a stat cache, and the digest of the whole listing.
//!
//! **Excludes** are gitignore patterns (the recipe's `exclude`, then the directory's
//! `.imgbuildignore` if it has one), matched with ripgrep's `ignore` crate: `*.log`, `target/`
//! (directories only), `/build` (anchored), `!keep.log` (re-included), `**/cache`.
//!
//! **The listing** is what the step's cache key covers: for each entry in byte order of its
//! relative path, its kind, the executable bit, and the file's size and sha256 or the
//! symlink's target. Never a timestamp, owner or inode: a fresh checkout of the same tree has
//! the same digest. Its encoding (hashed for [`Listing::digest`], and stored in the cache's
//! `trees/` bucket so `plan --explain` can name the files that changed):
//!
//! ```text
//! "imgbuild-tree 1\n", then per entry:
//!   kind (b'd' | b'f' | b'l'), exec (b'0' | b'1'), path bytes, 0x00,
//!   file: size (u64 big-endian), sha256 (32 bytes); symlink: target bytes, 0x00
//! ```
//!
//! **The stat cache** (the cache's `stat/` bucket, one index per source directory, as git's
//! index is one per work tree) maps each file's path, device, inode, size, mtime and ctime to
//! its digest. A file whose stat is unchanged is not read again, so a build that changes
//! nothing stats the tree and reads no file; one changed file re-reads that file. A rewrite
//! that keeps size and mtime (`touch -d`) still changes the ctime, and a replacement
//! (`rename` over it) the inode. A file modified within [`RACY_NS`] of when the index was
//! written may have changed again within the same timestamp tick, so it is hashed again the
//! next time (git's "racily clean" entries).

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

mod walk;

use crate::cache::Cache;
use crate::digest::{Digest, digest_reader};

/// The name of the ignore file read from the top of a copied directory.
pub const IGNORE_FILE: &str = ".imgbuildignore";

/// A file modified this close to the index's writing is hashed again next time.
pub const RACY_NS: i128 = 2_000_000_000;

const TREE_MAGIC: &[u8] = b"imgbuild-tree 1\n";
const STAT_MAGIC: &[u8] = b"imgbuild-stat 1\n";

#[derive(Debug, thiserror::Error)]
pub enum SrcTreeError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("exclude pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{path} is a {what}: only files, directories and symlinks can be copied")]
    Special { path: PathBuf, what: &'static str },
    #[error("{path} changed while it was read (a build reads the tree it planned)")]
    Changed { path: PathBuf },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SrcTreeError + use<> {
    let path = path.to_path_buf();
    move |source| SrcTreeError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, digest: Digest },
    Symlink(Vec<u8>),
}

/// One entry of a listing, by its path relative to the copied directory (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rel: Vec<u8>,
    pub kind: Kind,
    /// Any of the source's executable bits is set (for `preserve_mode`).
    pub exec: bool,
}

/// The copied directory as the step sees it.
#[derive(Debug, Clone)]
pub struct Listing {
    pub root: PathBuf,
    pub entries: Vec<Entry>,
    pub digest: Digest,
    /// The encoding the digest is of (see the module doc).
    pub encoded: Vec<u8>,
    /// How many files were read (their stat was not in the stat cache, or had changed).
    pub hashed: usize,
}

/// The exclude matcher of `root`: `patterns`, then `root/.imgbuildignore` if present.
pub fn excludes(root: &Path, patterns: &[String]) -> Result<Gitignore, SrcTreeError> {
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| SrcTreeError::Pattern {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
    }
    let file = root.join(IGNORE_FILE);
    if file.is_file() {
        let text = crate::fsutil::read_bounded(&file, 1 << 20).map_err(io_err("read", &file))?;
        for line in String::from_utf8_lossy(&text).lines() {
            b.add_line(Some(file.clone()), line)
                .map_err(|e| SrcTreeError::Pattern {
                    pattern: format!("{line} ({IGNORE_FILE})"),
                    message: e.to_string(),
                })?;
        }
    }
    b.build().map_err(|e| SrcTreeError::Pattern {
        pattern: patterns.join(" "),
        message: e.to_string(),
    })
}

/// What the stat cache remembers of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i128,
    ctime: i128,
    mode: u32,
}

impl Stamp {
    fn of_found(f: &walk::Found) -> Stamp {
        Stamp {
            dev: f.dev,
            ino: f.ino,
            size: f.size,
            mtime: f.mtime,
            ctime: f.ctime,
            mode: f.mode,
        }
    }

    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            mode: md.mode(),
        }
    }
}

/// Walks `root` without what `ignore` excludes and lists it, each file's digest from the stat
/// cache in `cache` (files whose stamp changed are hashed, on a few threads).
pub fn scan(cache: &Cache, root: &Path, ignore: &Gitignore) -> Result<Listing, SrcTreeError> {
    scan_with(cache, root, ignore, RACY_NS)
}

/// [`scan`], with the racy window given (the tests' `0` trusts every unchanged stamp).
fn scan_with(
    cache: &Cache,
    root: &Path,
    ignore: &Gitignore,
    racy_ns: i128,
) -> Result<Listing, SrcTreeError> {
    let root = root.canonicalize().map_err(io_err("resolve", root))?;
    let index_id = Digest::of(root.as_os_str().as_bytes());
    let started = now_ns();
    let known = cache
        .stat_index(&index_id)
        .map(|b| parse_index(&b, racy_ns))
        .unwrap_or_default();

    let mut found = walk::walk(&root, ignore)?;
    // The listing's order: by whole relative path, bytewise.
    found.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));

    // The index is sorted the same way: one pass pairs each file with what it remembers.
    let mut k = 0usize;
    let mut entries = Vec::with_capacity(found.len());
    let mut to_hash: Vec<(usize, PathBuf, Stamp)> = Vec::new();
    // Each file's stamp as found now, by its place in `entries` (for the index).
    let mut stamps: Vec<(usize, Stamp)> = Vec::new();
    let mut index_changed = false;
    for f in found {
        let path = || root.join(std::ffi::OsStr::from_bytes(&f.rel));
        let exec = f.mode & 0o111 != 0;
        let kind = match rustix::fs::FileType::from_raw_mode(f.mode) {
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::Symlink => {
                let p = path();
                let target = fs::read_link(&p).map_err(io_err("read the link", &p))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            }
            rustix::fs::FileType::RegularFile => {
                let stamp = Stamp::of_found(&f);
                while k < known.len() && known[k].rel.as_slice() < f.rel.as_slice() {
                    // A file the index has and the tree no longer does.
                    index_changed = true;
                    k += 1;
                }
                let remembered = match known.get(k) {
                    Some(e) if e.rel == f.rel => {
                        k += 1;
                        (e.stamp == stamp && !e.racy).then(|| e.digest.clone())
                    }
                    _ => None,
                };
                let size = stamp.size;
                stamps.push((entries.len(), stamp.clone()));
                let digest = match remembered {
                    Some(d) => d,
                    None => {
                        index_changed = true;
                        to_hash.push((entries.len(), path(), stamp));
                        Digest::of(b"")
                    }
                };
                Kind::File { size, digest }
            }
            other => {
                return Err(SrcTreeError::Special {
                    path: path(),
                    what: special_kind(other),
                });
            }
        };
        entries.push(Entry {
            rel: f.rel,
            kind,
            exec,
        });
    }
    index_changed |= k < known.len();

    let hashed_count = to_hash.len();
    // Hash what changed, a few files at a time.
    let hashed = std::sync::Mutex::new(Vec::with_capacity(to_hash.len()));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    crate::parallel::try_for_each(&to_hash, workers, |(i, path, stamp)| {
        let f = File::open(path).map_err(io_err("open", path))?;
        let (digest, size) =
            digest_reader(BufReader::with_capacity(1 << 20, f)).map_err(io_err("read", path))?;
        // Written while it was read: what was read is not what the stamp describes.
        let after = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
        if size != stamp.size || Stamp::of(&after) != *stamp {
            return Err(SrcTreeError::Changed { path: path.clone() });
        }
        if let Ok(mut h) = hashed.lock() {
            h.push((*i, digest));
        }
        Ok(())
    })?;
    for (i, digest) in hashed.into_inner().unwrap_or_default() {
        if let Some(e) = entries.get_mut(i)
            && let Kind::File { digest: d, .. } = &mut e.kind
        {
            *d = digest;
        }
    }

    // The index for next time: rewritten only when something was hashed or went away.
    if index_changed {
        let stamps: Vec<(&[u8], &Stamp, &Digest)> = stamps
            .iter()
            .filter_map(|(i, stamp)| match &entries[*i] {
                Entry {
                    rel,
                    kind: Kind::File { digest, .. },
                    ..
                } => Some((rel.as_slice(), stamp, digest)),
                _ => None,
            })
            .collect();
        // Only a speed-up: a failure to write it costs the next build a re-hash.
        let _ = cache.put_stat_index(&index_id, &encode_index(&stamps, started));
    }

    let encoded = encode_listing(&entries);
    let digest = Digest::of(&encoded);
    Ok(Listing {
        root,
        entries,
        digest,
        encoded,
        hashed: hashed_count,
    })
}

fn special_kind(ft: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType as F;
    match ft {
        F::Fifo => "named pipe",
        F::Socket => "socket",
        F::BlockDevice | F::CharacterDevice => "device",
        _ => "special file",
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The listing's encoding (see the module doc).
pub fn encode_listing(entries: &[Entry]) -> Vec<u8> {
    let mut out = TREE_MAGIC.to_vec();
    for e in entries {
        let kind = match e.kind {
            Kind::Dir => b'd',
            Kind::File { .. } => b'f',
            Kind::Symlink(_) => b'l',
        };
        out.push(kind);
        out.push(if e.exec { b'1' } else { b'0' });
        out.extend_from_slice(&e.rel);
        out.push(0);
        match &e.kind {
            Kind::Dir => {}
            Kind::File { size, digest } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&digest.raw());
            }
            Kind::Symlink(t) => {
                out.extend_from_slice(t);
                out.push(0);
            }
        }
    }
    out
}

/// Reads a listing back; `None` when the bytes are not one.
pub fn decode_listing(bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut rest = bytes.strip_prefix(TREE_MAGIC)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (&kind, r) = rest.split_first()?;
        let (&exec, r) = r.split_first()?;
        let nul = r.iter().position(|b| *b == 0)?;
        let rel = r[..nul].to_vec();
        rest = &r[nul + 1..];
        let kind = match kind {
            b'd' => Kind::Dir,
            b'f' => {
                if rest.len() < 40 {
                    return None;
                }
                let size = u64::from_be_bytes(rest[..8].try_into().ok()?);
                let digest = Digest::from_raw(rest[8..40].try_into().ok()?);
                rest = &rest[40..];
                Kind::File { size, digest }
            }
            b'l' => {
                let nul = rest.iter().position(|b| *b == 0)?;
                let t = rest[..nul].to_vec();
                rest = &rest[nul + 1..];
                Kind::Symlink(t)
            }
            _ => return None,
        };
        out.push(Entry {
            rel,
            kind,
            exec: exec == b'1',
        });
    }
    Some(out)
}

/// The stat index: magic, the time it was written (i128 ns, little-endian), then per file:
/// path length (u32) and bytes, dev, ino, size (u64), mtime, ctime (i128 ns), mode (u32),
/// sha256 (32 bytes). Little-endian throughout; it never leaves this machine.
fn encode_index(stamps: &[(&[u8], &Stamp, &Digest)], written: i128) -> Vec<u8> {
    let mut out = STAT_MAGIC.to_vec();
    out.extend_from_slice(&written.to_le_bytes());
    for (rel, s, d) in stamps {
        out.extend_from_slice(&(rel.len() as u32).to_le_bytes());
        out.extend_from_slice(rel);
        out.extend_from_slice(&s.dev.to_le_bytes());
        out.extend_from_slice(&s.ino.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.mtime.to_le_bytes());
        out.extend_from_slice(&s.ctime.to_le_bytes());
        out.extend_from_slice(&s.mode.to_le_bytes());
        out.extend_from_slice(&d.raw());
    }
    out
}

/// A file the index remembers: its stamp and digest, and whether it is racy (modified within
/// the racy window of the index's writing).
struct Known {
    rel: Vec<u8>,
    stamp: Stamp,
    digest: Digest,
    racy: bool,
}

/// The index's files in its (path) order; anything malformed ends it there (what follows is
/// hashed again).
fn parse_index(bytes: &[u8], racy_ns: i128) -> Vec<Known> {
    let mut out: Vec<Known> = Vec::new();
    let Some(rest) = bytes.strip_prefix(STAT_MAGIC) else {
        return out;
    };
    let Some((written, mut rest)) = take::<16>(rest).map(|(b, r)| (i128::from_le_bytes(b), r))
    else {
        return out;
    };
    while let Some((len, r)) = take::<4>(rest) {
        let len = u32::from_le_bytes(len) as usize;
        if r.len() < len {
            break;
        }
        let (rel, r) = r.split_at(len);
        let Some((fixed, r)) = take::<{ 8 * 3 + 16 * 2 + 4 + 32 }>(r) else {
            break;
        };
        let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().unwrap_or([0; 8]));
        let i128_at =
            |i: usize| i128::from_le_bytes(fixed[i..i + 16].try_into().unwrap_or([0; 16]));
        let stamp = Stamp {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime: i128_at(24),
            ctime: i128_at(40),
            mode: u32::from_le_bytes(fixed[56..60].try_into().unwrap_or([0; 4])),
        };
        let Ok(raw) = <[u8; 32]>::try_from(&fixed[60..92]) else {
            break;
        };
        let digest = Digest::from_raw(&raw);
        let racy = stamp.mtime.max(stamp.ctime) >= written - racy_ns;
        if out.last().is_some_and(|k| k.rel.as_slice() >= rel) {
            break;
        }
        out.push(Known {
            rel: rel.to_vec(),
            stamp,
            digest,
            racy,
        });
        rest = r;
    }
    out
}

fn take<const N: usize>(b: &[u8]) -> Option<([u8; N], &[u8])> {
    if b.len() < N {
        return None;
    }
    let (head, rest) = b.split_at(N);
    Some((head.try_into().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn names(l: &Listing) -> Vec<String> {
        l.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.rel).into_owned())
            .collect()
    }

    #[test]
    fn excludes_follow_gitignore_rules_and_the_ignore_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let src = dir.path().join("app");
        for f in [
            "a.txt",
            "debug.log",
            "keep.log",
            "target/out.bin",
            "src/target/kept.rs",
            "src/main.rs",
            "node_modules/x/index.js",
            "a.b",
            "a/b",
        ] {
            write(&src, f, f.as_bytes());
        }
        write(&src, IGNORE_FILE, b"# comment\nnode_modules/\n");
        let ig = excludes(
            &src,
            &["*.log".into(), "!keep.log".into(), "/target/".into()],
        )
        .unwrap();
        let l = scan(&cache, &src, &ig).unwrap();
        assert_eq!(
            names(&l),
            [
                IGNORE_FILE,
                "a",
                "a.b",
                "a.txt",
                "a/b",
                "keep.log",
                "src",
                "src/main.rs",
                "src/target",
                "src/target/kept.rs"
            ]
        );
        let bad = excludes(&src, &["a[z-a]".into()]).unwrap_err();
        assert!(
            bad.to_string().starts_with("exclude pattern `a[z-a]`: ")
                && bad.to_string().contains("invalid range"),
            "{bad}"
        );
    }

    #[test]
    fn the_stat_cache_sees_content_changes_that_keep_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let src = dir.path().join("app");
        write(&src, "f", b"one");
        write(&src, "g", b"other");
        let ig = excludes(&src, &[]).unwrap();
        // (No racy window: every unchanged stamp is trusted, so only the stamp can tell.)
        let first = scan_with(&cache, &src, &ig, 0).unwrap();
        assert_eq!(first.hashed, 2);
        let again = scan_with(&cache, &src, &ig, 0).unwrap();
        assert_eq!(
            (again.digest.clone(), again.hashed),
            (first.digest.clone(), 0)
        );
        // Same size, mtime put back: the ctime moved. Only that file is read again.
        let path = src.join("f");
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"two").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let changed = scan_with(&cache, &src, &ig, 0).unwrap();
        assert_ne!(changed.digest, first.digest);
        assert_eq!(changed.hashed, 1);
        assert_eq!(
            changed.entries[0].kind,
            Kind::File {
                size: 3,
                digest: Digest::of(b"two")
            }
        );
        // Replaced by another inode with the same size and mtime.
        let tmp = dir.path().join("tmp");
        fs::write(&tmp, b"six").unwrap();
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::rename(&tmp, &path).unwrap();
        let replaced = scan_with(&cache, &src, &ig, 0).unwrap();
        assert_eq!(replaced.hashed, 1);
        assert_eq!(
            replaced.entries[0].kind,
            Kind::File {
                size: 3,
                digest: Digest::of(b"six")
            }
        );
        // With the racy window, a file written just before the index is read again.
        let racy = scan(&cache, &src, &ig).unwrap();
        assert_eq!(racy.hashed, 2);
    }

    #[test]
    fn listings_round_trip_and_name_no_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let src = dir.path().join("app");
        write(&src, "bin/run", b"#!/bin/sh\n");
        fs::set_permissions(src.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/run", src.join("run")).unwrap();
        let l = scan(&cache, &src, &excludes(&src, &[]).unwrap()).unwrap();
        assert_eq!(decode_listing(&l.encoded).unwrap(), l.entries);
        assert!(l.entries[1].exec);
        assert_eq!(l.entries[2].kind, Kind::Symlink(b"bin/run".to_vec()));
        // A copy of the tree made later lists the same.
        let other = dir.path().join("copy");
        write(&other, "bin/run", b"#!/bin/sh\n");
        fs::set_permissions(other.join("bin/run"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("bin/run", other.join("run")).unwrap();
        let m = scan(&cache, &other, &excludes(&other, &[]).unwrap()).unwrap();
        assert_eq!(m.digest, l.digest);
    }

    proptest! {
        #[test]
        fn decoding_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_listing(&bytes);
            let mut with_magic = TREE_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_listing(&with_magic);
            let mut index = STAT_MAGIC.to_vec();
            index.extend_from_slice(&bytes);
            let _ = parse_index(&index, RACY_NS);
        }
    }
}
