//! Directory trees into layers: a sorted, deterministic walk (GNU `tar --sort=name` order)
//! with hard links, symlinks, devices and FIFOs and the extended attributes an image keeps
//! (file capabilities, `user.*`), streaming each file's contents.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::{LayerWriter, Meta};

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot archive {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// What went into the layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Options for [`append_tree`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkOptions {
    /// Owner for every entry instead of the tree's own (`--owner 0:0`).
    pub owner: Option<(u64, u64)>,
}

fn major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32
}

fn minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32
}

/// Appends everything below `root` (not `root` itself) to `w`, paths relative to `root`.
/// Sockets are skipped, as GNU tar does. A file seen again by inode becomes a hard link.
pub fn append_tree(
    w: &mut LayerWriter,
    root: &Path,
    opts: WalkOptions,
) -> Result<WalkStats, WalkError> {
    let mut stats = WalkStats::default();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf());
            WalkError::Read {
                path,
                source: e.into(),
            }
        })?;
        let full = entry.path();
        let read = |source| WalkError::Read {
            path: full.to_path_buf(),
            source,
        };
        let write = |source| WalkError::Write {
            path: full.to_path_buf(),
            source,
        };
        let md = entry.metadata().map_err(|e| read(e.into()))?;
        let rel = full
            .strip_prefix(root)
            .unwrap_or(full)
            .as_os_str()
            .as_bytes()
            .to_vec();
        let (uid, gid) = opts.owner.unwrap_or((md.uid() as u64, md.gid() as u64));
        let meta = Meta {
            mode: md.mode() & 0o7777,
            uid,
            gid,
        };
        let ft = md.file_type();
        if ft.is_dir() || ft.is_file() {
            w.xattrs(crate::rootfs::xattr::read_path(full).map_err(read)?);
        }
        if ft.is_dir() {
            w.dir(&rel, meta).map_err(write)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(full).map_err(read)?;
            w.symlink(&rel, target.as_os_str().as_bytes(), meta)
                .map_err(write)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                match links.get(&(md.dev(), md.ino())) {
                    Some(first) => {
                        // The attributes belong to the inode, already on the first entry.
                        w.xattrs(Vec::new());
                        w.hardlink(&rel, first, meta).map_err(write)?;
                        stats.entries += 1;
                        continue;
                    }
                    None => {
                        links.insert((md.dev(), md.ino()), rel.clone());
                    }
                }
            }
            let f = File::open(full).map_err(read)?;
            w.file(&rel, meta, md.len(), f).map_err(write)?;
            stats.file_bytes += md.len();
        } else if ft.is_fifo() {
            w.special(&rel, EntryType::Fifo, meta, (0, 0))
                .map_err(write)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            w.special(&rel, kind, meta, (major(md.rdev()), minor(md.rdev())))
                .map_err(write)?;
        } else {
            continue; // sockets
        }
        stats.entries += 1;
    }
    Ok(stats)
}
