//! Extended attributes an image keeps: file capabilities (`security.capability`, what
//! `setcap` writes for `ping`), `user.*` and `trusted.*`. Read from descriptors or host
//! paths, written to descriptors; always sorted by name so layers stay reproducible.
//!
//! Left out on purpose: `security.selinux` and other LSM labels (they describe the build
//! host's policy, and container runtimes relabel anyway), `system.posix_acl_*` (no image
//! tool carries ACLs in PAX `SCHILY.xattr` records), and overlayfs' own bookkeeping
//! (`trusted.overlay.*`, `user.overlay.*`), which would change what an overlay mount shows.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::XattrFlags;

/// Extended attributes of one entry: (name, value), sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Linux caps names and values at 64 KiB (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// Whether an attribute named `name` belongs in an image.
pub fn kept(name: &[u8]) -> bool {
    if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
        return false;
    }
    name == b"security.capability" || name.starts_with(b"user.") || name.starts_with(b"trusted.")
}

/// Attribute access on something: a descriptor or a host path (not followed).
trait Source {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize>;
    fn get(&self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize>;
    fn remove(&self, name: &[u8]) -> rustix::io::Result<()>;
}

struct Fd<F>(F);
impl<F: AsFd> Source for Fd<F> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::flistxattr(&self.0, buf)
    }
    fn get(&self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::fgetxattr(&self.0, name, buf)
    }
    fn remove(&self, name: &[u8]) -> rustix::io::Result<()> {
        rustix::fs::fremovexattr(&self.0, name)
    }
}

struct HostPath<'a>(&'a Path);
impl Source for HostPath<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::llistxattr(self.0, buf)
    }
    fn get(&self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::lgetxattr(self.0, name, buf)
    }
    fn remove(&self, name: &[u8]) -> rustix::io::Result<()> {
        rustix::fs::lremovexattr(self.0, name)
    }
}

/// The NUL-separated attribute names of `src` (none where the filesystem has no
/// attributes at all).
fn names(src: &dyn Source) -> io::Result<Vec<u8>> {
    let mut list = vec![0u8; 4096];
    let n = match src.list(&mut list) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            list = vec![0u8; XATTR_MAX];
            src.list(&mut list)?
        }
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    list.truncate(n);
    Ok(list)
}

/// The kept attributes of `src`; with `remove_others`, the others are removed from it.
fn read(src: &dyn Source, remove_others: bool) -> io::Result<Xattrs> {
    let names = names(src)?;
    let mut out = Vec::new();
    let mut value = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !kept(name) {
            if remove_others {
                match src.remove(name) {
                    Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                    Err(e) => return Err(failed("remove", name, e)),
                }
            }
            continue;
        }
        value.resize(256, 0);
        let n = match src.get(name, &mut value) {
            Ok(n) => n,
            Err(rustix::io::Errno::RANGE) => {
                value.resize(XATTR_MAX, 0);
                src.get(name, &mut value)?
            }
            // Removed between the list and the read.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push((name.to_vec(), value[..n].to_vec()));
    }
    out.sort();
    Ok(out)
}

/// The kept attributes of the open file or directory `fd`, after removing the others from
/// it (ACLs a maintainer script set, LSM labels): a root a step ran in becomes what unpacking
/// its layer gives. One listing serves both.
pub fn settle_fd(fd: impl AsFd) -> io::Result<Xattrs> {
    read(&Fd(fd), true)
}

/// The kept attributes of the host path `path` (a symlink's own, not its target's).
pub fn read_path(path: &Path) -> io::Result<Xattrs> {
    read(&HostPath(path), false)
}

/// An attribute that could not be set or removed, named.
fn failed(action: &str, name: &[u8], e: rustix::io::Errno) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!(
            "cannot {action} extended attribute {}: {e}",
            String::from_utf8_lossy(name)
        ),
    )
}

/// Sets `attrs` on the open file or directory `fd`; names that are not [`kept`] are ignored
/// (a hostile layer does not get to set SELinux labels or overlayfs redirects). Call it after
/// the owner is set: a `chown` clears `security.capability`.
pub fn write_fd(fd: impl AsFd, attrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in attrs.iter().filter(|(n, _)| kept(n)) {
        match rustix::fs::fsetxattr(&fd, name.as_slice(), value, XattrFlags::empty()) {
            Ok(()) => {}
            // A filesystem without user attributes (tmpfs before Linux 6.6) loses only
            // those; a capability that cannot be kept is an error.
            Err(rustix::io::Errno::NOTSUP) if name.as_slice() != b"security.capability" => {}
            Err(e) => return Err(failed("set", name, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_round_trip_sorted_and_foreign_ones_are_dropped() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let file = std::fs::File::open(&f).unwrap();
        let attrs = vec![
            (b"user.z".to_vec(), b"last".to_vec()),
            (b"user.a".to_vec(), vec![0, 1, 2]),
            (
                b"security.selinux".to_vec(),
                b"system_u:object_r:x".to_vec(),
            ),
            (b"trusted.overlay.redirect".to_vec(), b"/etc".to_vec()),
        ];
        match write_fd(&file, &attrs) {
            Ok(()) => {}
            // The temp dir's filesystem holds no user attributes: nothing to check here.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => return,
            Err(e) => panic!("{e}"),
        }
        let back = read_path(&f).unwrap();
        if back.is_empty() {
            return; // tmpfs without user xattrs: NOTSUP was tolerated
        }
        assert_eq!(
            back,
            vec![
                (b"user.a".to_vec(), vec![0, 1, 2]),
                (b"user.z".to_vec(), b"last".to_vec()),
            ]
        );
        assert_eq!(settle_fd(&file).unwrap(), back);
    }

    #[test]
    fn kept_names() {
        assert!(kept(b"security.capability"));
        assert!(kept(b"user.mime_type"));
        assert!(kept(b"trusted.md5"));
        assert!(!kept(b"security.selinux"));
        assert!(!kept(b"system.posix_acl_access"));
        assert!(!kept(b"trusted.overlay.opaque"));
        assert!(!kept(b"user.overlay.origin"));
    }
}
