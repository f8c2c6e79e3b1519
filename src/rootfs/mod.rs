//! Root-confined filesystem access: every create, remove, link, chown, chmod, utimes and read
//! that imgbuild does under an image root (unpacking layers for the sandbox, the disk flatten,
//! the sandbox diff and its clean-up, files staged into a root) goes through a [`Root`].
//!
//! An image root is hostile: a layer may hold `etc -> /etc` and then `etc/cron.d/x`, or a later
//! layer may replace a directory with a symlink. Joining host paths (`root.join(rel)`) lets the
//! kernel follow such links *on the host*, as root. Here every path is resolved by the kernel
//! with `openat2(RESOLVE_IN_ROOT)`: symlinks (absolute and relative, `..` included) are
//! followed as they would be inside the image, i.e. clamped to the root, exactly as a
//! container runtime would see them; the last component is never followed (operations act on
//! it relative to its parent directory's descriptor, with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`).
//!
//! Why `rustix::fs::openat2` and not `cap-std`: `cap-std`'s `Dir` *refuses* paths that leave
//! the directory (an absolute symlink is an error), while image semantics need them *resolved
//! inside* the root (`/lib -> usr/lib`, `/etc/alternatives/*` -> `/usr/bin/...`). Only
//! `RESOLVE_IN_ROOT` gives chroot-like resolution without a chroot, atomically in the kernel
//! (no check-then-use race). It needs Linux 5.6; older kernels get a clear error.

mod apply;
#[cfg(test)]
mod proptests;
pub mod xattr;

pub use apply::apply;
pub use xattr::Xattrs;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Uid};

/// Owner and permission bits to give a created entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attrs {
    pub const FILE: Attrs = Attrs {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
}

/// A directory that paths are resolved inside, never outside.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What kind of entry a path names (its last component not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

fn kind_of(st: &Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Splits `rel` into its parent (the components before the last, `/`-joined) and its last
/// component; `.`, empty components and a leading `/` are dropped. The last component may not
/// be `..` (what it names depends on the walk, so nothing is created or removed through it).
fn split(rel: &[u8]) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let comps: Vec<&[u8]> = rel
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(invalid("the root itself has no parent".into()));
    };
    if *last == b".." {
        return Err(invalid(format!(
            "path `{}` ends in `..`",
            String::from_utf8_lossy(rel)
        )));
    }
    Ok((parents.join(&b'/'), last.to_vec()))
}

fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

impl Root {
    /// Opens the directory at `path` (a host path the caller chose, e.g. a fresh temp dir).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path `rel` would have if nothing were a symlink: for messages only.
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        self.path
            .join(OsStr::from_bytes(rel.strip_prefix(b"/").unwrap_or(rel)))
    }

    /// `openat2(root, rel, RESOLVE_IN_ROOT)`, retried on `EAGAIN` (the kernel asks for a retry
    /// when a rename elsewhere raced with a `..` step).
    fn resolve(&self, rel: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        let path: &OsStr = if rel.is_empty() {
            OsStr::new(".")
        } else {
            OsStr::from_bytes(rel)
        };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                path,
                flags | OFlags::CLOEXEC,
                mode,
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::AGAIN) if tries < 64 => tries += 1,
                Err(rustix::io::Errno::NOSYS) => {
                    return Err(io::Error::other(
                        "this kernel has no openat2 (Linux 5.6 or newer is needed to unpack images safely)",
                    ));
                }
                other => return other.map_err(to_io),
            }
        }
    }

    /// The directory `rel`, resolved inside the root (every symlink on the way followed as
    /// the image would); with `create`, missing directories are made (0755, root-owned).
    pub fn dir(&self, rel: &[u8], create: bool) -> io::Result<OwnedFd> {
        self.dir_hops(rel, create, 0)
    }

    fn dir_hops(&self, rel: &[u8], create: bool, hops: u32) -> io::Result<OwnedFd> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY;
        match self.resolve(rel, flags, Mode::empty()) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound && hops < 40 => {}
            other => return other,
        }
        // Make the missing components one by one; each parent is itself resolved in the root.
        let (parent, name) = split(rel)?;
        let pfd = self.dir_hops(&parent, true, hops + 1)?;
        let n = OsStr::from_bytes(&name);
        match rustix::fs::mkdirat(&pfd, n, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            // A dangling symlink: make its target (inside the root), as containerd's applier
            // does for a layer's `link -> /missing` followed by `link/file`.
            Err(rustix::io::Errno::EXIST) => {
                if let Ok(t) = rustix::fs::readlinkat(&pfd, n, Vec::new()) {
                    let t = t.into_bytes();
                    let next = if t.starts_with(b"/") {
                        t
                    } else {
                        [&parent[..], b"/", &t].concat()
                    };
                    self.dir_hops(&next, true, hops + 1)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.resolve(rel, flags, Mode::empty())
    }

    /// The parent directory of `rel` (resolved in the root, made with `create`) and the
    /// last component, which the caller acts on without following it.
    pub fn parent(&self, rel: &[u8], create: bool) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (parent, name) = split(rel)?;
        Ok((self.dir(&parent, create)?, name))
    }

    /// `lstat` of `rel` (its parents resolved in the root); `None` when it does not exist.
    pub fn stat(&self, rel: &[u8]) -> io::Result<Option<Stat>> {
        let (pfd, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&pfd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The kind of entry at `rel`, if any (last component not followed).
    pub fn kind(&self, rel: &[u8]) -> io::Result<Option<Kind>> {
        Ok(self.stat(rel)?.as_ref().map(kind_of))
    }

    /// Whether `rel` names a directory once every symlink (the last one too) is followed
    /// inside the root.
    pub fn is_dir_followed(&self, rel: &[u8]) -> bool {
        self.resolve(rel, OFlags::DIRECTORY | OFlags::PATH, Mode::empty())
            .is_ok()
    }

    /// Removes whatever `rel` names (a directory with everything in it); absent is fine.
    pub fn remove(&self, rel: &[u8]) -> io::Result<()> {
        let (pfd, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(&pfd, &name)
    }

    /// Removes everything inside the directory `rel` (an opaque whiteout), keeping it.
    pub fn clear(&self, rel: &[u8]) -> io::Result<()> {
        let fd = match self.dir(rel, false) {
            Ok(fd) => fd,
            Err(e) if missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        clear_fd(fd)
    }

    /// Makes the directory `rel` (parents as needed) with `attrs`. An existing directory gets
    /// `attrs`; an existing symlink that leads to a directory inside the root is kept (a layer
    /// with `lib/` over an image with `lib -> usr/lib`); anything else there is replaced.
    pub fn mkdir(&self, rel: &[u8], attrs: Attrs) -> io::Result<()> {
        let (pfd, name) = self.parent(rel, true)?;
        let n = OsStr::from_bytes(&name);
        match rustix::fs::statat(&pfd, n, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match kind_of(&st) {
                Kind::Dir => {}
                Kind::Symlink if self.is_dir_followed(rel) => return Ok(()),
                _ => {
                    remove_at(&pfd, &name)?;
                    mkdir_at(&pfd, n)?;
                }
            },
            Err(_) => mkdir_at(&pfd, n)?,
        }
        let fd = rustix::fs::openat(
            &pfd,
            n,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        set_attrs(&fd, attrs)
    }

    /// Creates the regular file `rel` (replacing what is there, parents made as needed) with
    /// `data`, `attrs` and, when given, `mtime`.
    pub fn write_file(
        &self,
        rel: &[u8],
        attrs: Attrs,
        mtime: Option<SystemTime>,
        data: &mut dyn Read,
    ) -> io::Result<u64> {
        let (pfd, name) = self.parent(rel, true)?;
        remove_at(&pfd, &name)?;
        let fd = rustix::fs::openat(
            &pfd,
            OsStr::from_bytes(&name),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut f = File::from(fd);
        let n = io::copy(data, &mut f)?;
        f.flush()?;
        set_attrs(&f, attrs)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        Ok(n)
    }

    /// [`Root::write_file`] from a byte slice.
    pub fn write(&self, rel: &[u8], attrs: Attrs, contents: &[u8]) -> io::Result<()> {
        self.write_file(rel, attrs, None, &mut &contents[..])
            .map(|_| ())
    }

    /// Creates the symlink `rel -> target` (replacing what is there) owned by `uid:gid`.
    pub fn symlink(&self, rel: &[u8], target: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let (pfd, name) = self.parent(rel, true)?;
        remove_at(&pfd, &name)?;
        let n = OsStr::from_bytes(&name);
        rustix::fs::symlinkat(OsStr::from_bytes(target), &pfd, n)?;
        rustix::fs::chownat(
            &pfd,
            n,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Renames `from` to `to` (both resolved in the root, neither last component followed),
    /// replacing what `to` names, as `rename(2)` does.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (fd_from, n_from) = self.parent(from, false)?;
        let (fd_to, n_to) = self.parent(to, true)?;
        rustix::fs::renameat(
            &fd_from,
            OsStr::from_bytes(&n_from),
            &fd_to,
            OsStr::from_bytes(&n_to),
        )?;
        Ok(())
    }

    /// Makes `rel` a hard link to `target` (both resolved in the root; `target`'s last
    /// component is not followed, so a link to a symlink links the symlink itself).
    pub fn hard_link(&self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        let (tfd, tname) = self.parent(target, false)?;
        let (pfd, name) = self.parent(rel, true)?;
        remove_at(&pfd, &name)?;
        rustix::fs::linkat(
            &tfd,
            OsStr::from_bytes(&tname),
            &pfd,
            OsStr::from_bytes(&name),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Opens the regular file `rel` for reading; a symlink as the last component is refused.
    pub fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let (pfd, name) = self.parent(rel, false)?;
        let fd = rustix::fs::openat(
            &pfd,
            OsStr::from_bytes(&name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(invalid(format!(
                "{} is not a regular file",
                self.display(rel).display()
            )));
        }
        Ok(f)
    }

    /// Opens the file `rel`, following every symlink (the last one too) inside the root: what
    /// a program in the image would read.
    pub fn open_followed(&self, rel: &[u8]) -> io::Result<File> {
        let f = File::from(self.resolve(rel, OFlags::RDONLY, Mode::empty())?);
        if !f.metadata()?.is_file() {
            return Err(invalid(format!(
                "{} is not a regular file",
                self.display(rel).display()
            )));
        }
        Ok(f)
    }

    /// Reads the file `rel` (symlinks followed inside the root), at most `limit` bytes.
    pub fn read_followed(&self, rel: &[u8], limit: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_followed(rel)?.take(limit).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Copies the file `rel` (symlinks followed inside the root) to the host path `to`.
    pub fn copy_out(&self, rel: &[u8], to: &Path) -> io::Result<u64> {
        let mut f = self.open_followed(rel)?;
        let mut out = File::create(to)?;
        io::copy(&mut f, &mut out)
    }

    /// The kept extended attributes ([`xattr::kept`]) of the file or directory `rel`, the
    /// others removed from it ([`xattr::settle_fd`]); other kinds of entries (symlinks,
    /// devices, FIFOs) carry none here.
    pub fn settle_xattrs(&self, rel: &[u8]) -> io::Result<Xattrs> {
        match self.open_entry(rel)? {
            Some(fd) => xattr::settle_fd(fd),
            None => Ok(Vec::new()),
        }
    }

    /// Sets `attrs` (only the kept names) on the file or directory `rel`.
    pub fn set_xattrs(&self, rel: &[u8], attrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        match self.open_entry(rel)? {
            Some(fd) => xattr::write_fd(fd, attrs),
            None => Ok(()),
        }
    }

    /// `rel` opened read-only without following it, when it is a file or a directory.
    fn open_entry(&self, rel: &[u8]) -> io::Result<Option<OwnedFd>> {
        let (pfd, name) = self.parent(rel, false)?;
        let n = OsStr::from_bytes(&name);
        let st = rustix::fs::statat(&pfd, n, AtFlags::SYMLINK_NOFOLLOW)?;
        if !matches!(kind_of(&st), Kind::File | Kind::Dir) {
            return Ok(None);
        }
        let fd = rustix::fs::openat(
            &pfd,
            n,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Some(fd))
    }

    /// The target of the symlink `rel`.
    pub fn read_link(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let (pfd, name) = self.parent(rel, false)?;
        Ok(rustix::fs::readlinkat(&pfd, OsStr::from_bytes(&name), Vec::new())?.into_bytes())
    }

    /// The names in the directory `rel` (symlinks on the way followed in the root), sorted.
    pub fn read_dir(&self, rel: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut names = names_in(&self.dir(rel, false)?)?;
        names.sort();
        Ok(names)
    }
}

/// Every entry under the host directory `root` (symlinks not followed, `root` itself left
/// out): its path relative to `root`, as bytes, and its metadata. For reading a root imgbuild
/// made itself (a snapshot, a view of it); writes go through [`Root`].
pub fn walk(root: &Path) -> impl Iterator<Item = io::Result<(Vec<u8>, std::fs::Metadata)>> + '_ {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .map(move |e| {
            let e = e.map_err(io::Error::from)?;
            let m = e.metadata().map_err(io::Error::from)?;
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            Ok((rel.as_os_str().as_bytes().to_vec(), m))
        })
}

/// A path that is not there: `ENOENT`, or `ENOTDIR` (a parent is not a directory).
pub fn missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

fn mkdir_at(pfd: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o755)) {
        // Another layer unpacked at the same time made it.
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `fchown` then `fchmod` (in that order: a chown clears set-id bits).
fn set_attrs(fd: impl AsFd, a: Attrs) -> io::Result<()> {
    rustix::fs::fchown(&fd, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(a.mode & 0o7777))?;
    Ok(())
}

/// Removes `name` in the directory `pfd` without following it; a directory with its contents.
fn remove_at(pfd: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let n = OsStr::from_bytes(name);
    match rustix::fs::statat(pfd, n, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if kind_of(&st) == Kind::Dir => {
            let fd = rustix::fs::openat(
                pfd,
                n,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_fd(fd)?;
            match rustix::fs::unlinkat(pfd, n, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Ok(_) => match rustix::fs::unlinkat(pfd, n, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
    }
}

/// The names in the directory open as `fd`, without `.` and `..`, in directory order.
fn names_in(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in Dir::read_from(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Removes everything inside the directory open as `fd`.
fn clear_fd(fd: OwnedFd) -> io::Result<()> {
    for n in names_in(&fd)? {
        remove_at(&fd, &n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf, Root) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(t.path().join("canary")).unwrap();
        std::fs::write(t.path().join("canary/keep"), b"x").unwrap();
        let r = Root::open(&root).unwrap();
        (t, root, r)
    }

    #[test]
    fn absolute_and_dotdot_links_stay_in_the_root() {
        let (t, root, r) = tree();
        let canary = t.path().join("canary");
        r.symlink(b"abs", canary.as_os_str().as_bytes(), 0, 0)
            .unwrap();
        r.symlink(b"rel", b"../../canary", 0, 0).unwrap();
        r.write(b"abs/pwned", Attrs::FILE, b"no").unwrap();
        r.write(b"rel/pwned", Attrs::FILE, b"no").unwrap();
        // Written where the image would see them.
        let inside = root.join(canary.strip_prefix("/").unwrap());
        assert!(inside.join("pwned").exists());
        assert!(root.join("canary/pwned").exists());
        r.clear(b"abs").unwrap();
        r.remove(b"rel/keep").unwrap();
        r.hard_link(b"abs/../../keep", b"hl").unwrap_err();
        assert!(!inside.join("pwned").exists());
        assert!(!canary.join("pwned").exists());
        assert!(canary.join("keep").exists());
    }

    #[test]
    fn last_component_is_never_followed() {
        let (t, _root, r) = tree();
        let canary = t.path().join("canary/keep");
        r.symlink(b"x", canary.as_os_str().as_bytes(), 0, 0)
            .unwrap();
        r.write(b"x", Attrs::FILE, b"replaced").unwrap();
        assert_eq!(std::fs::read(&canary).unwrap(), b"x");
        r.symlink(b"d", b"/", 0, 0).unwrap();
        r.remove(b"d").unwrap();
        assert!(canary.exists());
        assert!(r.open_file(b"x").is_ok());
        r.symlink(b"y", b"x", 0, 0).unwrap();
        assert!(r.open_file(b"y").is_err());
        assert_eq!(r.read_followed(b"y", 100).unwrap(), b"replaced");
        assert!(split(b"a/..").is_err());
    }
}
