//! The walk of a copied directory: each directory read once (`getdents`) and each entry
//! stat'ed relative to its directory's descriptor (`fstatat`, no path lookup from the root),
//! on a few threads. Written here rather than with `walkdir`: the stat of every entry is the
//! whole cost of a build that changes nothing, and a full path per entry doubled it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use ignore::gitignore::Gitignore;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};

use super::SrcTreeError;

/// An entry found: its path relative to the root and what its `lstat` said.
pub(super) struct Found {
    pub rel: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i128,
    pub ctime: i128,
}

impl Found {
    fn new(rel: Vec<u8>, st: &Stat) -> Found {
        Found {
            rel,
            mode: st.st_mode,
            size: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }
}

fn err(action: &'static str, root: &Path, rel: &[u8], e: rustix::io::Errno) -> SrcTreeError {
    SrcTreeError::Io {
        action,
        path: root.join(OsStr::from_bytes(rel)),
        source: e.into(),
    }
}

/// Directories waiting to be read, and how many are queued or being read.
struct Queue {
    dirs: Vec<Vec<u8>>,
    busy: usize,
    failed: Option<SrcTreeError>,
}

/// Every entry below `root` that `ignore` does not exclude (an excluded directory is not
/// entered), in no particular order.
pub(super) fn walk(root: &Path, ignore: &Gitignore) -> Result<Vec<Found>, SrcTreeError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open", root, b"", e))?;
    let queue = Mutex::new(Queue {
        dirs: vec![Vec::new()],
        busy: 1,
        failed: None,
    });
    let ready = Condvar::new();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let found = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let dir = {
                        let Ok(mut q) = queue.lock() else { return };
                        loop {
                            if q.failed.is_some() {
                                break None;
                            }
                            if let Some(d) = q.dirs.pop() {
                                break Some(d);
                            }
                            if q.busy == 0 {
                                break None;
                            }
                            q = match ready.wait(q) {
                                Ok(q) => q,
                                Err(_) => return,
                            };
                        }
                    };
                    let Some(dir) = dir else { break };
                    let mut subdirs = Vec::new();
                    let result = read_dir(&root_fd, root, &dir, ignore, &mut mine, &mut subdirs);
                    if let Ok(mut q) = queue.lock() {
                        q.busy += subdirs.len();
                        q.busy -= 1;
                        q.dirs.extend(subdirs);
                        if let Err(e) = result {
                            q.failed.get_or_insert(e);
                        }
                    }
                    ready.notify_all();
                }
                if let Ok(mut f) = found.lock() {
                    f.append(&mut mine);
                }
            });
        }
    });
    let q = queue.into_inner().map_err(|_| SrcTreeError::Io {
        action: "walk",
        path: root.to_path_buf(),
        source: std::io::Error::other("a walker thread panicked"),
    })?;
    if let Some(e) = q.failed {
        return Err(e);
    }
    Ok(found.into_inner().unwrap_or_default())
}

/// Reads the directory `rel` (relative to the root): its entries into `out`, the directories
/// among them to enter into `subdirs`.
fn read_dir(
    root_fd: &rustix::fd::OwnedFd,
    root: &Path,
    rel: &[u8],
    ignore: &Gitignore,
    out: &mut Vec<Found>,
    subdirs: &mut Vec<Vec<u8>>,
) -> Result<(), SrcTreeError> {
    let fd = if rel.is_empty() {
        rustix::fs::openat(
            root_fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    } else {
        rustix::fs::openat(
            root_fd,
            OsStr::from_bytes(rel),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }
    .map_err(|e| err("open", root, rel, e))?;
    let mut dir = Dir::read_from(&fd).map_err(|e| err("read", root, rel, e))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| err("read", root, rel, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut path = Vec::with_capacity(rel.len() + 1 + name.len());
        if !rel.is_empty() {
            path.extend_from_slice(rel);
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let stat = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err("stat", root, &path, e))?;
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if ignore
            .matched(Path::new(OsStr::from_bytes(&path)), is_dir)
            .is_ignore()
        {
            continue;
        }
        if is_dir {
            subdirs.push(path.clone());
        }
        out.push(Found::new(path, &stat));
    }
    Ok(())
}
