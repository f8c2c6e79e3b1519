//! A read-only view of the image below the step being built: every path of the base and the
//! earlier layers (whiteouts applied), with the contents of the few files steps need to read
//! (`/etc/passwd` and friends, `/etc/skel`, systemd units).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use tar::EntryType;

use crate::cache::{Cache, LayerRecord};
use crate::layer::Meta;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    Other,
}

#[derive(Debug, Clone)]
pub struct LowerEntry {
    pub kind: Kind,
    pub meta: Meta,
    pub data: Option<Vec<u8>>,
}

/// Paths are relative to the root, without leading or trailing slashes.
#[derive(Debug, Default)]
pub struct LowerFs {
    entries: BTreeMap<Vec<u8>, LowerEntry>,
    scanned: usize,
    /// Files whose contents the build needs besides the usual ones (`[[file]] append`).
    extra: std::collections::BTreeSet<Vec<u8>>,
}

fn wanted(path: &[u8]) -> bool {
    const EXACT: [&[u8]; 11] = [
        b"etc/passwd",
        b"etc/group",
        b"etc/shadow",
        b"etc/gshadow",
        b"etc/subuid",
        b"etc/subgid",
        b"etc/login.defs",
        b"etc/os-release",
        b"usr/lib/os-release",
        b"var/lib/dpkg/status",
        b"var/lib/apt/extended_states",
    ];
    const PREFIX: [&[u8]; 7] = [
        b"etc/skel/",
        b"etc/systemd/system/",
        b"lib/systemd/system/",
        b"usr/lib/systemd/system/",
        b"etc/apt/",
        b"usr/share/keyrings/",
        b"var/lib/dpkg/triggers/",
    ];
    EXACT.contains(&path) || PREFIX.iter().any(|p| path.starts_with(p))
}

/// Normalizes a tar path: no leading `./` or `/`, no trailing `/`.
pub fn norm(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    p.to_vec()
}

impl LowerFs {
    /// Keeps the contents of `path` too (before the first `advance`).
    pub fn keep(&mut self, path: &str) {
        self.extra.insert(norm(path.as_bytes()));
    }

    fn wants(&self, path: &[u8]) -> bool {
        // A kept path may name the file through a symlinked directory (`/bin` -> `usr/bin`).
        wanted(path)
            || (!self.extra.is_empty()
                && self
                    .extra
                    .iter()
                    .any(|x| x == path || self.resolve(x) == path))
    }

    /// Brings the view up to date with `layers` (scanning only those not seen yet).
    pub fn advance(&mut self, cache: &Cache, layers: &[LayerRecord]) -> io::Result<()> {
        while self.scanned < layers.len() {
            let l = &layers[self.scanned];
            self.scan(&cache.blob_path(&l.digest), &l.media_type)?;
            self.scanned += 1;
        }
        Ok(())
    }

    fn scan(&mut self, blob: &Path, media_type: &str) -> io::Result<()> {
        let reader = crate::layer::decompressed(File::open(blob)?, media_type)?;
        self.apply(reader)
    }

    /// Makes the view that of the unpacked image at `root` (the build's live root), in place
    /// of reading its layers again.
    pub fn load_root(&mut self, root: &Path) -> io::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        self.entries.clear();
        let confined = crate::rootfs::Root::open(root)?;
        for e in crate::rootfs::walk(root) {
            let (rel, m) = e?;
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink(confined.read_link(&rel)?)
            } else {
                Kind::Other
            };
            let meta = Meta {
                mode: m.permissions().mode() & 0o7777,
                uid: u64::from(m.uid()),
                gid: u64::from(m.gid()),
            };
            let entry = LowerEntry {
                kind,
                meta,
                data: None,
            };
            self.entries.insert(rel, entry);
        }
        // The contents, once every path is known (a kept path may name its file through a
        // symlink), read inside the root: the image's symlinks never lead out of it.
        let want: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(p, e)| e.kind == Kind::File && self.wants(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in want {
            let f = confined.open_file(&p)?;
            if f.metadata()?.len() >= (32 << 20) {
                continue;
            }
            let mut buf = Vec::new();
            f.take(32 << 20).read_to_end(&mut buf)?;
            if let Some(e) = self.entries.get_mut(&p) {
                e.data = Some(buf);
            }
        }
        Ok(())
    }

    /// Applies one uncompressed layer stream to the view.
    fn apply(&mut self, reader: impl Read) -> io::Result<()> {
        let mut ar = tar::Archive::new(reader);
        for entry in ar.entries()? {
            let mut e = entry?;
            let path = norm(&e.path_bytes());
            let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
                Some(i) => (&path[..=i], &path[i + 1..]),
                None => (&b""[..], &path[..]),
            };
            if name == b".wh..wh..opq" {
                self.remove_under(dir);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let mut target = dir.to_vec();
                target.extend_from_slice(hidden);
                self.remove_tree(&target);
                continue;
            }
            let h = e.header();
            let meta = Meta {
                mode: h.mode()? & 0o7777,
                uid: h.uid()?,
                gid: h.gid()?,
            };
            let kind = match h.entry_type() {
                EntryType::Directory => Kind::Dir,
                EntryType::Regular | EntryType::Continuous | EntryType::Link => Kind::File,
                EntryType::Symlink => {
                    Kind::Symlink(e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default())
                }
                _ => Kind::Other,
            };
            if kind != Kind::Dir {
                self.remove_tree(&path);
            }
            let data = if kind == Kind::File && self.wants(&path) && e.size() < (32 << 20) {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)?;
                Some(buf)
            } else {
                None
            };
            self.entries.insert(path, LowerEntry { kind, meta, data });
        }
        Ok(())
    }

    fn remove_tree(&mut self, path: &[u8]) {
        self.entries.remove(path);
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        self.remove_under(&prefix);
    }

    /// Removes the entries strictly under `prefix` (empty, or a directory ending in `/`).
    /// They sort together: a range, not a pass over every entry (this runs for each
    /// non-directory of every layer read).
    fn remove_under(&mut self, prefix: &[u8]) {
        let under: Vec<Vec<u8>> = self
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| k.len() > prefix.len())
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.entries.remove(&k);
        }
    }

    /// Records an entry a step just wrote, so later steps in this build see it.
    pub fn insert(&mut self, path: &[u8], kind: Kind, meta: Meta, data: Option<Vec<u8>>) {
        let path = norm(path);
        let data = data.filter(|_| self.wants(&path));
        self.entries.insert(path, LowerEntry { kind, meta, data });
    }

    /// How many layers the view reflects.
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// Marks the layers up to `n` as already reflected (after inserting a fresh layer).
    pub fn mark_scanned(&mut self, n: usize) {
        self.scanned = n;
    }

    pub fn get(&self, path: &[u8]) -> Option<&LowerEntry> {
        self.entries.get(&norm(path))
    }

    /// The contents of a file the view keeps (see `wanted`), after resolving symlinks.
    pub fn read(&self, path: &[u8]) -> Option<&[u8]> {
        let p = self.resolve(path);
        self.entries.get(&p)?.data.as_deref()
    }

    /// Entries directly or indirectly under `dir`, in order.
    pub fn children<'a>(
        &'a self,
        dir: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a LowerEntry)> + 'a {
        let mut prefix = norm(dir);
        prefix.push(b'/');
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Resolves symlinks in every component of `path` (as the kernel would inside the image).
    pub fn resolve(&self, path: &[u8]) -> Vec<u8> {
        let mut todo: Vec<Vec<u8>> = norm(path)
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        todo.reverse();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"." => continue,
                b".." => {
                    out.pop();
                    continue;
                }
                _ => {}
            }
            out.push(c);
            let cur = out.join(&b'/');
            if let Some(LowerEntry {
                kind: Kind::Symlink(target),
                ..
            }) = self.entries.get(&cur)
            {
                hops += 1;
                if hops > 40 {
                    break;
                }
                out.pop();
                if target.starts_with(b"/") {
                    out.clear();
                }
                for part in target.split(|b| *b == b'/').filter(|c| !c.is_empty()).rev() {
                    todo.push(part.to_vec());
                }
            }
        }
        out.join(&b'/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn paths(v: &LowerFs) -> Vec<String> {
        v.entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn whiteouts_remove_exactly_the_tree_they_name() {
        use EntryType::{Directory as D, Regular as F};
        let mut v = LowerFs::default();
        v.apply(
            &layer(&[
                ("a", D),
                ("a/b", D),
                ("a/b/c", F),
                ("a/bc", F),
                ("a/b.d", F),
                ("ab", F),
                ("x", D),
                ("x/y", F),
                ("x/z", D),
                ("x/z/w", F),
            ])[..],
        )
        .unwrap();
        // `a/b` hidden: its subtree goes, `a/bc` and `a/b.d` (which sort around it) stay.
        v.apply(&layer(&[("a/.wh.b", F)])[..]).unwrap();
        assert_eq!(
            paths(&v),
            ["a", "a/b.d", "a/bc", "ab", "x", "x/y", "x/z", "x/z/w"]
        );
        // A file replacing a directory removes what was under it.
        v.apply(&layer(&[("x/z", F)])[..]).unwrap();
        assert_eq!(paths(&v), ["a", "a/b.d", "a/bc", "ab", "x", "x/y", "x/z"]);
        // An opaque directory keeps itself, loses everything below.
        v.apply(&layer(&[("x/.wh..wh..opq", F)])[..]).unwrap();
        assert_eq!(paths(&v), ["a", "a/b.d", "a/bc", "ab", "x"]);
    }
}
