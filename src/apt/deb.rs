//! .deb files: an `ar` archive of `debian-binary`, `control.tar.*` and `data.tar.*`. The data
//! member is decompressed and streamed entry by entry into a layer (no temporary unpack), with
//! paths checked, conffiles written as `PATH.dpkg-new` (as dpkg leaves them when unpacked) and
//! the file list recorded for dpkg's database.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use md5::Digest as _;
use tar::EntryType;

use crate::layer::{LayerWriter, Meta};
use crate::lower::{Kind, LowerFs, norm};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{deb}: cannot read: {source}")]
    Io { deb: String, source: io::Error },
    #[error("{deb}: {message}")]
    Format { deb: String, message: String },
    #[error("{deb}: unsafe path `{path}` in the package: {why}")]
    UnsafePath {
        deb: String,
        path: String,
        why: &'static str,
    },
}

/// The control member's contents.
#[derive(Debug, Clone, Default)]
pub struct ControlInfo {
    pub control: String,
    /// Files dpkg keeps in `/var/lib/dpkg/info/PKG.NAME`: md5sums, conffiles, maintainer
    /// scripts, triggers, shlibs, symbols, templates... (name, content, mode).
    pub info: Vec<(String, Vec<u8>, u32)>,
}

impl ControlInfo {
    pub fn conffiles(&self) -> Vec<String> {
        self.info
            .iter()
            .find(|(n, _, _)| n == "conffiles")
            .map(|(_, c, _)| {
                String::from_utf8_lossy(c)
                    .lines()
                    .map(str::trim)
                    // `remove-on-upgrade /path` entries are flags, not shipped files.
                    .filter(|l| l.starts_with('/'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn decompressor<'a>(name: &str, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(if name.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(r))
    } else if name.ends_with(".zst") {
        Box::new(zstd::Decoder::new(r)?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if name.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported member compression `{name}`"),
        ));
    })
}

/// Walks the ar members of `deb`, calling `f(name, reader)` for control and data.
fn members(
    deb: &Path,
    label: &str,
    only_control: bool,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<(), DebError>,
) -> Result<(), DebError> {
    let io = |source| DebError::Io {
        deb: label.to_string(),
        source,
    };
    let file = File::open(deb).map_err(io)?;
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(io)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if first {
            let mut v = String::new();
            entry.read_to_string(&mut v).map_err(io)?;
            if name != "debian-binary" || !v.starts_with("2.") {
                return Err(DebError::Format {
                    deb: label.into(),
                    message: "not a Debian binary package (no debian-binary 2.x)".into(),
                });
            }
            first = false;
            continue;
        }
        if name.starts_with("control.tar") || name.starts_with("data.tar") {
            f(&name, &mut entry)?;
            if name.starts_with("control.tar") && only_control {
                // The data member (most of the file) is not read at all.
                return Ok(());
            }
        }
    }
    if first {
        return Err(DebError::Format {
            deb: label.into(),
            message: "empty archive".into(),
        });
    }
    Ok(())
}

/// Reads the control member.
pub fn control(deb: &Path, label: &str) -> Result<ControlInfo, DebError> {
    let mut out: Option<ControlInfo> = None;
    members(deb, label, true, |name, r| {
        if !name.starts_with("control.tar") {
            return Ok(());
        }
        let io = |source| DebError::Io {
            deb: label.to_string(),
            source,
        };
        let mut info = ControlInfo::default();
        let mut ar = tar::Archive::new(decompressor(name, r).map_err(io)?);
        for e in ar.entries().map_err(io)? {
            let mut e = e.map_err(io)?;
            if e.header().entry_type() != EntryType::Regular {
                continue;
            }
            let path = norm(&e.path_bytes());
            let file = String::from_utf8_lossy(&path).into_owned();
            let mode = e.header().mode().map_err(io)? & 0o7777;
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(io)?;
            if file == "control" {
                info.control = String::from_utf8(buf).map_err(|_| DebError::Format {
                    deb: label.into(),
                    message: "control file is not UTF-8".into(),
                })?;
            } else if !file.contains('/') {
                info.info.push((file, buf, mode));
            }
        }
        info.info.sort_by(|a, b| a.0.cmp(&b.0));
        out = Some(info);
        Ok(())
    })?;
    out.filter(|c| !c.control.is_empty())
        .ok_or_else(|| DebError::Format {
            deb: label.into(),
            message: "no control file".into(),
        })
}

/// Checks a package path: relative, no `..`, normalized. Returns it without `./`.
fn safe(path: &[u8], label: &str) -> Result<Vec<u8>, DebError> {
    let unsafe_path = |why| DebError::UnsafePath {
        deb: label.to_string(),
        path: String::from_utf8_lossy(path).into_owned(),
        why,
    };
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    if p.starts_with(b"/") {
        return Err(unsafe_path("absolute path"));
    }
    if p.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(unsafe_path("`..` component"));
    }
    Ok(norm(p))
}

/// Whether a symlink at `path` pointing to `target` stays inside the root.
fn link_inside(path: &[u8], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return !target.split(|b| *b == b'/').any(|c| c == b"..");
    }
    let mut depth: i64 = path.split(|b| *b == b'/').count() as i64 - 1;
    for c in target.split(|b| *b == b'/') {
        match c {
            b".." => depth -= 1,
            b"" | b"." => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Writes one package's files into a layer.
pub struct Unpacker<'a> {
    pub w: &'a mut LayerWriter,
    /// The image below (merged-/usr symlinks are followed through it).
    pub lower: &'a LowerFs,
    /// Directories this layer already has (shared by the packages of one layer).
    pub dirs: &'a mut HashSet<Vec<u8>>,
}

impl Unpacker<'_> {
    /// Writes `dir` and its parents, unless this layer has them already.
    pub fn ensure_dir(&mut self, dir: &[u8], meta: Meta) -> io::Result<()> {
        let mut cur = Vec::new();
        for comp in dir.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if !cur.is_empty() {
                cur.push(b'/');
            }
            cur.extend_from_slice(comp);
            if self.dirs.contains(&cur) {
                continue;
            }
            let m = match self.lower.get(&cur) {
                Some(e) if e.kind == Kind::Dir => e.meta,
                Some(e) if matches!(e.kind, Kind::Symlink(_)) => continue,
                _ => meta,
            };
            self.w.dir(&cur, m)?;
            self.dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Streams the data member of `deb` into the layer. Returns the package's paths as dpkg
    /// lists them (`/.`, then each entry without a trailing slash), and the `md5sums` dpkg
    /// would compute for a package that ships none (regular files but conffiles).
    pub fn data(
        &mut self,
        deb: &Path,
        label: &str,
        conffiles: &[String],
    ) -> Result<(Vec<String>, String), DebError> {
        let mut list = vec!["/.".to_string()];
        let mut md5sums = String::new();
        let conf: HashSet<Vec<u8>> = conffiles.iter().map(|c| norm(c.as_bytes())).collect();
        let mut seen_data = false;
        members(deb, label, false, |name, r| {
            if !name.starts_with("data.tar") {
                return Ok(());
            }
            seen_data = true;
            let io = |source| DebError::Io {
                deb: label.to_string(),
                source,
            };
            let mut ar = tar::Archive::new(decompressor(name, r).map_err(io)?);
            for e in ar.entries().map_err(io)? {
                let mut e = e.map_err(io)?;
                if let Some(path) = self.entry(&mut e, label, &conf, &mut md5sums)? {
                    list.push(format!("/{}", String::from_utf8_lossy(&path)));
                }
            }
            Ok(())
        })?;
        if !seen_data {
            return Err(DebError::Format {
                deb: label.into(),
                message: "no data member".into(),
            });
        }
        Ok((list, md5sums))
    }

    /// One entry of the data member into the layer, beside the image below (its parents'
    /// symlinks followed, as dpkg does); conffiles as `.dpkg-new`. Returns its path, unless
    /// it is the archive's root.
    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        label: &str,
        conf: &HashSet<Vec<u8>>,
        md5sums: &mut String,
    ) -> Result<Option<Vec<u8>>, DebError> {
        let io = |source| DebError::Io {
            deb: label.to_string(),
            source,
        };
        let raw = e.path_bytes().into_owned();
        let path = safe(&raw, label)?;
        if path.is_empty() {
            return Ok(None);
        }
        // Follow the symlinks of the image below in the parent (bin -> usr/bin).
        let (parent, file) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (self.lower.resolve(&path[..i]), &path[i + 1..]),
            None => (Vec::new(), &path[..]),
        };
        let mut dest = parent.clone();
        if !dest.is_empty() {
            dest.push(b'/');
        }
        dest.extend_from_slice(file);
        let h = e.header();
        let meta = Meta {
            mode: h.mode().map_err(io)? & 0o7777,
            uid: h.uid().map_err(io)?,
            gid: h.gid().map_err(io)?,
        };
        let kind = h.entry_type();
        if kind != EntryType::Directory {
            self.ensure_dir(&parent, Meta::DIR).map_err(io)?;
        }
        match kind {
            EntryType::Directory => {
                // A directory the image has as a symlink stays a symlink (as dpkg).
                if matches!(
                    self.lower.get(&dest).map(|e| &e.kind),
                    Some(Kind::Symlink(_))
                ) || self.dirs.contains(&dest)
                {
                    return Ok(Some(path));
                }
                self.ensure_dir(&parent, Meta::DIR).map_err(io)?;
                self.w.dir(&dest, meta).map_err(io)?;
                self.dirs.insert(dest);
            }
            EntryType::Regular | EntryType::Continuous => {
                let is_conf = conf.contains(&path);
                if is_conf {
                    dest.extend_from_slice(b".dpkg-new");
                }
                let size = e.size();
                let mut hashing = Md5Reader {
                    inner: &mut *e,
                    md5: md5::Md5::new(),
                };
                self.w.file(&dest, meta, size, &mut hashing).map_err(io)?;
                if !is_conf {
                    md5sums.push_str(&format!(
                        "{}  {}\n",
                        hex::encode(hashing.md5.finalize()),
                        String::from_utf8_lossy(&path)
                    ));
                }
            }
            EntryType::Symlink => {
                let target = e.link_name_bytes().unwrap_or_default().into_owned();
                if !link_inside(&path, &target) {
                    return Err(DebError::UnsafePath {
                        deb: label.to_string(),
                        path: format!(
                            "{} -> {}",
                            String::from_utf8_lossy(&path),
                            String::from_utf8_lossy(&target)
                        ),
                        why: "symlink leaves the root",
                    });
                }
                self.w.symlink(&dest, &target, meta).map_err(io)?;
            }
            EntryType::Link => {
                let target = e.link_name_bytes().unwrap_or_default().into_owned();
                let t = safe(&target, label)?;
                let (tp, tf) = match t.iter().rposition(|b| *b == b'/') {
                    Some(i) => (self.lower.resolve(&t[..i]), &t[i + 1..]),
                    None => (Vec::new(), &t[..]),
                };
                let mut td = tp;
                if !td.is_empty() {
                    td.push(b'/');
                }
                td.extend_from_slice(tf);
                self.w.hardlink(&dest, &td, meta).map_err(io)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let dev = (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                self.w.special(&dest, kind, meta, dev).map_err(io)?;
            }
            other => {
                return Err(DebError::Format {
                    deb: label.to_string(),
                    message: format!(
                        "unsupported entry type {other:?} at {}",
                        String::from_utf8_lossy(&path)
                    ),
                });
            }
        }
        Ok(Some(path))
    }
}

/// Computes the md5 of what is read through it.
struct Md5Reader<R> {
    inner: R,
    md5: md5::Md5,
}

impl<R: Read> Read for Md5Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        md5::Digest::update(&mut self.md5, &buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_links_are_checked() {
        assert_eq!(safe(b"./usr/bin/x", "d").unwrap(), b"usr/bin/x");
        assert_eq!(safe(b"./", "d").unwrap(), b"");
        assert!(safe(b"/etc/x", "d").is_err());
        assert!(safe(b"./usr/../../etc", "d").is_err());
        assert!(link_inside(b"usr/bin/x", b"../lib/y"));
        assert!(link_inside(b"usr/bin/x", b"/usr/lib/y"));
        assert!(!link_inside(b"usr/bin/x", b"../../../etc/passwd"));
        assert!(!link_inside(b"usr/x", b"/../etc"));
    }
}
