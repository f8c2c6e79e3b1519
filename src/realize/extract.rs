//! Archive extraction for `[[download]] extract`: the cached archive (fetched and verified by
//! [`crate::http::fetch`]; tar, tar.gz, tar.xz, zip) streamed into the layer.
//!
//! Archive entries keep the archive's order (hard links must follow their targets, and the
//! archive is pinned by its sha256, so the order is as reproducible as a sort), with modes
//! kept, owners set to the recipe's `owner` or root, and mtimes normalized by the writer.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use tar::EntryType;

use crate::lower::{Kind, LowerFs};

use crate::layer::{LayerWriter, Meta};

/// An archive entry path that leaves its directory (absolute or with `..`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsafeEntry(pub String);

impl From<String> for UnsafeEntry {
    fn from(m: String) -> Self {
        UnsafeEntry(m)
    }
}

impl From<&str> for UnsafeEntry {
    fn from(m: &str) -> Self {
        UnsafeEntry(m.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("cannot read archive {url}")]
    Io { url: String, source: io::Error },
    #[error("cannot read zip archive {url}")]
    Zip {
        url: String,
        source: zip::result::ZipError,
    },
    #[error("archive {url} has an unsafe entry `{entry}`: {why}")]
    Unsafe {
        url: String,
        entry: String,
        why: String,
    },
}

/// Maps an archive path below `dir` after stripping components; `None` to skip the entry.
fn map_path(raw: &[u8], strip: u32, dir: &[u8]) -> Result<Option<Vec<u8>>, UnsafeEntry> {
    let comps: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.contains(&&b".."[..]) {
        return Err(UnsafeEntry(String::from_utf8_lossy(raw).into_owned()));
    }
    if comps.len() <= strip as usize {
        return Ok(None);
    }
    let mut out = dir.to_vec();
    for c in &comps[strip as usize..] {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    Ok(Some(out))
}

/// Streams one archive into the layer.
pub struct Extractor<'a> {
    pub w: &'a mut LayerWriter,
    pub lower: &'a mut LowerFs,
    pub url: &'a str,
    pub dir: Vec<u8>,
    pub strip: u32,
    pub owner: (u64, u64),
    emitted: BTreeSet<Vec<u8>>,
    /// Symlinks this archive made: nothing may be extracted through them.
    links: BTreeSet<Vec<u8>>,
    /// Regular files this archive made: the only targets a hard link may have.
    files: BTreeSet<Vec<u8>>,
}

impl<'a> Extractor<'a> {
    pub fn new(
        w: &'a mut LayerWriter,
        lower: &'a mut LowerFs,
        url: &'a str,
        dir: &str,
        strip: u32,
        owner: (u64, u64),
    ) -> Self {
        let dir = lower.resolve(dir.as_bytes());
        Extractor {
            w,
            lower,
            url,
            dir,
            strip,
            owner,
            emitted: BTreeSet::new(),
            links: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn io(&self) -> impl Fn(io::Error) -> ExtractError + '_ {
        |source| ExtractError::Io {
            url: self.url.to_string(),
            source,
        }
    }

    /// Emits missing parent directories of `path` (the image's own metadata where it has them).
    fn parents(&mut self, path: &[u8]) -> io::Result<()> {
        let mut cur = Vec::new();
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !cur.is_empty() {
                cur.push(b'/');
            }
            cur.extend_from_slice(c);
            if self.emitted.contains(&cur) {
                continue;
            }
            let meta = match self.lower.get(&cur) {
                Some(e) if e.kind == Kind::Dir => e.meta,
                _ => Meta {
                    uid: self.owner.0,
                    gid: self.owner.1,
                    ..Meta::DIR
                },
            };
            self.w.dir(&cur, meta)?;
            self.lower.insert(&cur, Kind::Dir, meta, None);
            self.emitted.insert(cur.clone());
        }
        Ok(())
    }

    // One archive entry's header fields, as tar and zip give them.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        raw: &[u8],
        kind: EntryType,
        mode: u32,
        size: u64,
        link: Option<&[u8]>,
        dev: (u32, u32),
        data: &mut dyn Read,
    ) -> Result<(), ExtractError> {
        let refuse = |why: String| ExtractError::Unsafe {
            url: crate::http::redact(self.url),
            entry: String::from_utf8_lossy(raw).into_owned(),
            why,
        };
        let unsafe_entry = |_: UnsafeEntry| refuse("absolute or with `..`".into());
        let Some(path) = map_path(raw, self.strip, &self.dir).map_err(unsafe_entry)? else {
            return Ok(());
        };
        // An entry under a symlink the archive itself made would be written wherever that
        // link points (GNU tar refuses this too, with --keep-directory-symlink off).
        let mut prefix = Vec::new();
        for c in path.split(|b| *b == b'/') {
            if !prefix.is_empty() && self.links.contains(&prefix) {
                return Err(refuse(format!(
                    "it is under `{}`, a symlink earlier in the archive",
                    String::from_utf8_lossy(&prefix)
                )));
            }
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(c);
        }
        let meta = Meta {
            mode: mode & 0o7777,
            uid: self.owner.0,
            gid: self.owner.1,
        };
        let url = self.url.to_string();
        let io = |source| ExtractError::Io {
            url: url.clone(),
            source,
        };
        self.parents(&path).map_err(&io)?;
        super::tree::whiteout_if_replaced(self.w, self.lower, &path, kind == EntryType::Directory)
            .map_err(&io)?;
        match kind {
            EntryType::Directory => {
                if self.emitted.insert(path.clone()) {
                    self.w.dir(&path, meta).map_err(&io)?;
                }
                self.lower.insert(&path, Kind::Dir, meta, None);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.w.file(&path, meta, size, data).map_err(&io)?;
                self.lower.insert(&path, Kind::File, meta, None);
                self.links.remove(&path);
                self.files.insert(path.clone());
            }
            EntryType::Symlink => {
                let target = link.unwrap_or_default().to_vec();
                self.w.symlink(&path, &target, meta).map_err(&io)?;
                self.lower.insert(&path, Kind::Symlink(target), meta, None);
                self.links.insert(path.clone());
                self.files.remove(&path);
            }
            EntryType::Link => {
                let raw_target = link.unwrap_or_default();
                let target = map_path(raw_target, self.strip, &self.dir)
                    .map_err(unsafe_entry)?
                    .filter(|t| self.files.contains(t))
                    .ok_or_else(|| {
                        refuse(format!(
                            "a hard link to `{}`, which is not a file earlier in the archive",
                            String::from_utf8_lossy(raw_target)
                        ))
                    })?;
                self.w.hardlink(&path, &target, meta).map_err(&io)?;
                self.lower.insert(&path, Kind::File, meta, None);
                self.files.insert(path.clone());
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                self.w.special(&path, kind, meta, dev).map_err(&io)?;
                self.lower.insert(&path, Kind::Other, meta, None);
            }
            _ => {}
        }
        Ok(())
    }

    /// Extracts the cached archive at `blob`.
    pub fn run(mut self, blob: &Path, format: &str) -> Result<(), ExtractError> {
        let f = File::open(blob).map_err(self.io())?;
        let top = self.dir.clone();
        if !top.is_empty() {
            let mut probe = top.clone();
            probe.extend_from_slice(b"/x");
            self.parents(&probe).map_err(self.io())?;
        }
        if format == "zip" {
            return self.zip(f);
        }
        let reader: Box<dyn Read> = match format {
            "tar.gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                1 << 20,
                f,
            ))),
            "tar.xz" => Box::new(liblzma::read::XzDecoder::new(BufReader::with_capacity(
                1 << 20,
                f,
            ))),
            _ => Box::new(BufReader::with_capacity(1 << 20, f)),
        };
        let mut ar = tar::Archive::new(reader);
        let entries = ar.entries().map_err(self.io())?;
        for e in entries {
            let mut e = e.map_err(self.io())?;
            let raw = e.path_bytes().into_owned();
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let h = e.header();
            let (kind, mode, size) = (h.entry_type(), h.mode().map_err(self.io())?, e.size());
            let dev = (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            );
            self.entry(&raw, kind, mode, size, link.as_deref(), dev, &mut e)?;
        }
        Ok(())
    }

    fn zip(mut self, f: File) -> Result<(), ExtractError> {
        let zerr = |url: &str| {
            let url = url.to_string();
            move |source| ExtractError::Zip {
                url: url.clone(),
                source,
            }
        };
        let mut z = zip::ZipArchive::new(BufReader::new(f)).map_err(zerr(self.url))?;
        for i in 0..z.len() {
            let mut e = z.by_index(i).map_err(zerr(self.url))?;
            let raw = e.name_raw().to_vec();
            let mode = e.unix_mode();
            if e.is_dir() {
                self.entry(
                    &raw,
                    EntryType::Directory,
                    mode.unwrap_or(0o755),
                    0,
                    None,
                    (0, 0),
                    &mut io::empty(),
                )?;
            } else if e.is_symlink() {
                let mut target = Vec::new();
                e.read_to_end(&mut target).map_err(self.io())?;
                self.entry(
                    &raw,
                    EntryType::Symlink,
                    0o777,
                    0,
                    Some(&target),
                    (0, 0),
                    &mut io::empty(),
                )?;
            } else {
                let size = e.size();
                self.entry(
                    &raw,
                    EntryType::Regular,
                    mode.unwrap_or(0o644),
                    size,
                    None,
                    (0, 0),
                    &mut e,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_and_reject() {
        assert_eq!(
            map_path(b"go/bin/go", 1, b"usr/local/go").unwrap(),
            Some(b"usr/local/go/bin/go".to_vec())
        );
        assert_eq!(map_path(b"go/", 1, b"usr/local/go").unwrap(), None);
        assert!(map_path(b"a/../../etc", 0, b"x").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Arbitrary bytes as every archive format: an error or a layer, never a panic.
        #[test]
        fn arbitrary_archives_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            strip in 0u32..3,
        ) {
            let t = tempfile::tempdir().unwrap();
            let blob = t.path().join("archive");
            std::fs::write(&blob, &raw).unwrap();
            for format in ["tar", "tar.gz", "tar.xz", "zip"] {
                let out = crate::cache::BlobWriter::create(t.path(), t.path()).unwrap();
                let spec = crate::layer::CompressionSpec::new(crate::recipe::Compression::Gzip, None);
                let mut w = LayerWriter::to_blob(out, spec, 0).unwrap();
                let mut lower = LowerFs::default();
                let started = std::time::Instant::now();
                let _ = Extractor::new(&mut w, &mut lower, "http://127.0.0.1:9/a", "/opt/x", strip, (0, 0))
                    .run(&blob, format);
                proptest::prop_assert!(started.elapsed() < std::time::Duration::from_secs(5));
            }
        }
    }
}
