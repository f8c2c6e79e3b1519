//! A step's layer content before it is written: a sorted map of paths to entries, with
//! parent directories filled in from the image below.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader};

use crate::layer::{LayerWriter, Meta};
use crate::lower::{Kind, LowerFs, norm};
use crate::plan::FileSource;

#[derive(Debug, Clone)]
pub enum NodeKind {
    Dir,
    File {
        source: FileSource,
        size: u64,
    },
    /// A file of a copied directory: its content must still have the digest the step's key
    /// was computed from (checked while it is written).
    Checked {
        path: std::path::PathBuf,
        size: u64,
        digest: crate::digest::Digest,
    },
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub meta: Meta,
}

#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
}

impl Tree {
    /// Adds `path` (absolute, in the image). Its parent is resolved through the symlinks of
    /// the image below (a file for `/lib/x` lands in `usr/lib/x` on merged-/usr systems), and
    /// parents are added with the lower image's metadata; those it lacks are created 0755
    /// and owned like the entry (as `COPY --chown` does). Returns the path actually used.
    pub fn add(&mut self, lower: &LowerFs, path: &str, kind: NodeKind, meta: Meta) -> Vec<u8> {
        let p = norm(path.as_bytes());
        let (parent, name) = match p.iter().rposition(|b| *b == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&b""[..], &p[..]),
        };
        let parent = lower.resolve(parent);
        self.parents(
            lower,
            &parent,
            Meta {
                mode: 0o755,
                ..meta
            },
        );
        let mut full = parent.clone();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(name);
        self.nodes.insert(full.clone(), Node { kind, meta });
        full
    }

    /// Adds `path` (relative to the root, already resolved: its parents are entries of this
    /// tree) as it is.
    pub fn insert_resolved(&mut self, path: Vec<u8>, kind: NodeKind, meta: Meta) {
        self.nodes.insert(path, Node { kind, meta });
    }

    /// Adds every ancestor of `dir` (already resolved), and `dir` itself; `new` is the
    /// metadata of those the image below does not have.
    pub fn parents(&mut self, lower: &LowerFs, dir: &[u8], new: Meta) {
        let mut cur = Vec::new();
        for comp in dir.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if !cur.is_empty() {
                cur.push(b'/');
            }
            cur.extend_from_slice(comp);
            if self.nodes.contains_key(&cur) {
                continue;
            }
            let meta = match lower.get(&cur) {
                Some(e) if e.kind == Kind::Dir => e.meta,
                _ => new,
            };
            self.nodes.insert(
                cur.clone(),
                Node {
                    kind: NodeKind::Dir,
                    meta,
                },
            );
        }
    }

    /// Writes the entries in path order and records them in `lower` for later steps.
    pub fn write(self, w: &mut LayerWriter, lower: &mut LowerFs) -> io::Result<()> {
        for (path, node) in self.nodes {
            whiteout_if_replaced(w, lower, &path, matches!(node.kind, NodeKind::Dir))?;
            match node.kind {
                NodeKind::Dir => {
                    w.dir(&path, node.meta)?;
                    lower.insert(&path, Kind::Dir, node.meta, None);
                }
                NodeKind::Symlink(target) => {
                    w.symlink(&path, &target, node.meta)?;
                    lower.insert(&path, Kind::Symlink(target), node.meta, None);
                }
                NodeKind::File { source, size } => {
                    let data = match &source {
                        FileSource::Inline(b) => {
                            w.file(&path, node.meta, size, b.as_slice())?;
                            Some(b.clone())
                        }
                        FileSource::Path(p) if size < (1 << 20) => {
                            // Small files are kept so later steps can read them (unit files).
                            let b = std::fs::read(p).map_err(|e| {
                                io::Error::new(e.kind(), format!("{}: {e}", p.display()))
                            })?;
                            w.file(&path, node.meta, size, b.as_slice())?;
                            Some(b)
                        }
                        FileSource::Path(p) => {
                            let f = File::open(p).map_err(|e| {
                                io::Error::new(e.kind(), format!("{}: {e}", p.display()))
                            })?;
                            w.file(&path, node.meta, size, BufReader::with_capacity(1 << 20, f))?;
                            None
                        }
                    };
                    lower.insert(&path, Kind::File, node.meta, data);
                }
                NodeKind::Checked {
                    path: src,
                    size,
                    digest,
                } => {
                    let f = File::open(&src)
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
                    let mut r =
                        crate::digest::HashingReader::new(BufReader::with_capacity(1 << 20, f));
                    // The view keeps only what later steps read (unit files, /etc/passwd):
                    // a small file is read whole for it.
                    let data = if size < (1 << 20) {
                        let mut b = Vec::with_capacity(size as usize);
                        io::Read::read_to_end(&mut io::Read::take(&mut r, size + 1), &mut b)?;
                        w.file(&path, node.meta, size, b.as_slice())?;
                        Some(b)
                    } else {
                        w.file(&path, node.meta, size, &mut r)?;
                        None
                    };
                    let (found, _) = r.finish();
                    if found != digest {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} changed since it was planned (expected {digest}, found {found}): build again",
                                src.display()
                            ),
                        ));
                    }
                    lower.insert(&path, Kind::File, node.meta, data);
                }
            }
        }
        Ok(())
    }
}

/// An entry that changes a path of the image below between directory and non-directory gets
/// a whiteout first, so the old tree does not linger under the new entry. (A whiteout hides
/// only lower layers, so it may share this layer with the new entry.)
pub fn whiteout_if_replaced(
    w: &mut LayerWriter,
    lower: &LowerFs,
    path: &[u8],
    is_dir: bool,
) -> io::Result<()> {
    match lower.get(path) {
        Some(e) if (e.kind == Kind::Dir) != is_dir => w.whiteout(path),
        _ => Ok(()),
    }
}
