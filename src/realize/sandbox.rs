//! The sandbox for what must run inside the image (`dpkg --configure -a`, later `[pip]` and
//! `[[run]]`): the layers so far are unpacked into a directory, a command runs there under
//! bubblewrap (its own mount, PID, IPC and network namespaces; the host's filesystem is not
//! visible), and what it changed becomes a layer.
//!
//! Changes are found by comparing each path's inode, change time and size before and after,
//! so unchanged files are never read. Leftovers that would make the layer differ from one
//! build to the next (logs, `*-old` backups, ld.so's aux cache, a generated machine id, SSH
//! host keys) are removed first, as mmdebstrap does.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{Cache, LayerRecord};
use crate::layer::{LayerWriter, Meta};
use crate::rootfs::{Attrs, Root};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no usable sandbox: {0} (install bubblewrap, run as root, or build with --no-configure)"
    )]
    Unavailable(String),
    #[error("cannot unpack layer {layer} into {dir}")]
    Unpack {
        layer: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("`{command}` failed in the sandbox ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Where sandbox roots are unpacked: `$IMGBUILD_SANDBOX_DIR`, else `/dev/shm` (a tmpfs:
/// creating tens of thousands of files there is several times cheaper than on a journaled
/// disk), else the cache's `tmp/`.
pub fn work_dir(cache: &Cache) -> PathBuf {
    if let Some(d) = &crate::settings::get().sandbox_dir {
        return d.clone();
    }
    let shm = Path::new("/dev/shm");
    let writable =
        fs::metadata(shm).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o002 != 0);
    if writable {
        shm.to_path_buf()
    } else {
        cache.root().join("tmp")
    }
}

/// Decompresses one layer blob and applies it to `root` (see [`crate::rootfs::apply`]).
fn unpack_layer(root: &Root, blob: &Path, media_type: &str, mtime: u64) -> io::Result<()> {
    let reader = crate::layer::decompressed(File::open(blob)?, media_type)?;
    crate::rootfs::apply(root, reader, mtime)
}

/// Unpacks `layers` (in order, whiteouts applied) into `root`, those in `independent`
/// concurrently: they must
/// not touch each other's paths (the package layers: each file belongs to one package, and
/// directories they share are created by whichever comes first with the same metadata).
pub fn materialize_with(
    cache: &Cache,
    layers: &[LayerRecord],
    independent: std::ops::Range<usize>,
    root: &Path,
    mtime: u64,
) -> Result<(), SandboxError> {
    let confined = Root::open(root).map_err(|source| SandboxError::Io {
        action: "open the unpack root",
        path: root.to_path_buf(),
        source,
    })?;
    let one = |l: &LayerRecord| {
        unpack_layer(&confined, &cache.blob_path(&l.digest), &l.media_type, mtime).map_err(
            |source| SandboxError::Unpack {
                layer: l.digest.to_string(),
                dir: root.to_path_buf(),
                source,
            },
        )
    };
    let independent = independent.start.min(layers.len())..independent.end.min(layers.len());
    for l in &layers[..independent.start] {
        one(l)?;
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    crate::parallel::try_for_each(&layers[independent.clone()], workers, |l| one(l))?;
    for l in &layers[independent.end.max(independent.start)..] {
        one(l)?;
    }
    Ok(())
}

/// What identifies a path's state: inode, change time, size, mode (with the file type).
type Stamp = (u64, i64, i64, u64, u32);

/// Whether two snapshots of a root show the same contents: the same paths, and every one
/// but the directories unchanged. (A directory's ctime moves when an entry is made and
/// removed in it again, as bwrap does with its mount points; its entries are compared.)
pub fn same_contents(before: &HashMap<Vec<u8>, Stamp>, after: &HashMap<Vec<u8>, Stamp>) -> bool {
    let is_dir = |s: &Stamp| rustix::fs::FileType::from_raw_mode(s.4).is_dir();
    before.len() == after.len()
        && before.iter().all(|(p, s)| match after.get(p) {
            Some(t) if is_dir(s) && is_dir(t) => s.4 == t.4,
            Some(t) => s == t,
            None => false,
        })
}

/// Every path under `root` (relative), with its stamp.
pub fn snapshot(root: &Path) -> Result<HashMap<Vec<u8>, Stamp>, SandboxError> {
    let mut out = HashMap::new();
    for e in crate::rootfs::walk(root) {
        let (rel, m) = e.map_err(|source| SandboxError::Io {
            action: "scan",
            path: root.to_path_buf(),
            source,
        })?;
        out.insert(
            rel,
            (m.ino(), m.ctime(), m.ctime_nsec(), m.size(), m.mode()),
        );
    }
    Ok(out)
}

/// bwrap makes its mount points (and opens bind targets) before it enters the root, so a
/// symlink at one of them would be followed on the host: `/dev`, `/proc` and `/tmp` must be
/// real directories inside the root. A hostile image's symlink there is replaced.
fn prepare_mount_points(root: &Path) -> Result<Root, SandboxError> {
    let confined = Root::open(root).map_err(|source| SandboxError::Io {
        action: "open",
        path: root.to_path_buf(),
        source,
    })?;
    for d in ["dev", "proc", "tmp"] {
        let io = |source| SandboxError::Io {
            action: "prepare the mount point",
            path: root.join(d),
            source,
        };
        if confined.kind(d.as_bytes()).map_err(io)? != Some(crate::rootfs::Kind::Dir) {
            confined
                .mkdir(
                    d.as_bytes(),
                    Attrs {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                )
                .map_err(io)?;
        }
    }
    Ok(confined)
}

/// Whether a bind may target `rel`: a real directory chain and a regular (or absent) file.
fn bindable(confined: &Root, rel: &str) -> bool {
    let mut prefix = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for c in &parts[..parts.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        if !matches!(
            confined.kind(prefix.as_bytes()),
            Ok(Some(crate::rootfs::Kind::Dir))
        ) {
            return false;
        }
    }
    matches!(
        confined.kind(rel.as_bytes()),
        Ok(None) | Ok(Some(crate::rootfs::Kind::File))
    )
}

/// Finds bubblewrap and checks it can make a sandbox here.
pub fn bwrap() -> Result<PathBuf, SandboxError> {
    // Without root, bwrap would put the sandbox in a user namespace where only one uid maps,
    // and package scripts that chown to system users fail in confusing ways: say it first.
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
    if uid != 0 {
        return Err(SandboxError::Unavailable(format!(
            "running as uid {uid}: package scripts need root inside the sandbox"
        )));
    }
    let found = crate::tool::find("bwrap")
        .ok_or_else(|| SandboxError::Unavailable("bwrap (bubblewrap) is not on PATH".into()))?;
    let probe = Command::new(&found)
        .args([
            "--ro-bind",
            "/",
            "/",
            "--unshare-pid",
            "--unshare-net",
            "true",
        ])
        .output()
        .map_err(|e| SandboxError::Unavailable(format!("cannot run {}: {e}", found.display())))?;
    if !probe.status.success() {
        return Err(SandboxError::Unavailable(format!(
            "bwrap cannot create namespaces here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        )));
    }
    Ok(found)
}

/// The environment every sandboxed program gets (on top of `--clearenv`): a standard PATH,
/// no prompts, a UTF-8 C locale, root's home, and the build time as `SOURCE_DATE_EPOCH`.
pub(super) fn set_env(cmd: &mut Command, mtime: u64) {
    for (k, v) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("DEBIAN_FRONTEND", "noninteractive"),
        ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/root"),
    ] {
        cmd.args(["--setenv", k, v]);
    }
    cmd.args(["--setenv", "SOURCE_DATE_EPOCH", &mtime.to_string()]);
}

/// Runs `script` with `/bin/sh -c` inside `root`; `network` shares the host's network.
/// `label` names the command in errors; `env` is added to a clean environment.
pub fn run(
    bwrap: &Path,
    root: &Path,
    label: &str,
    script: &str,
    env: &[(&str, &str)],
    network: bool,
    mtime: u64,
) -> Result<String, SandboxError> {
    let confined = prepare_mount_points(root)?;
    let bindable = |rel: &str| bindable(&confined, rel);
    let mut cmd = Command::new(bwrap);
    cmd.arg("--bind").arg(root).arg("/");
    cmd.args([
        "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
    ]);
    // Not a user namespace: as root it would map only uid 0, and packages chown files to
    // system users and groups (root:mail, root:shadow).
    cmd.args([
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--clearenv",
    ]);
    if network {
        // The host's resolver and CA bundle (the build machine's network may need its own
        // CA), over files the image already has, so nothing new appears in the layer.
        if bindable("etc/resolv.conf") {
            cmd.args(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]);
        }
        let ca = "/etc/ssl/certs/ca-certificates.crt";
        if Path::new(ca).exists()
            && bindable(&ca[1..])
            && confined.kind(&ca.as_bytes()[1..]).ok().flatten().is_some()
        {
            cmd.args(["--ro-bind", ca, ca]);
        }
    } else {
        cmd.arg("--unshare-net");
    }
    set_env(&mut cmd, mtime);
    for (k, v) in env {
        cmd.args(["--setenv", k, v]);
    }
    cmd.args(["/bin/sh", "-c", script]);
    let out = cmd
        .output()
        .map_err(|e| SandboxError::Unavailable(format!("cannot run bwrap: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        return Err(SandboxError::Failed {
            command: label.to_string(),
            status: out.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(text)
}

/// Paths removed after running, when they appeared or changed: they differ on every build.
const LEFTOVERS: &[&str] = &[
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/available-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/passwd-",
    "etc/group-",
    "etc/subuid-",
    "etc/subgid-",
    "root/.bash_history",
];

/// Removes non-reproducible leftovers, and blanks a machine id generated by the run. Every
/// path is resolved inside the root: what ran in the sandbox may have made `etc/ssh` or
/// `tmp` a symlink to a host directory.
pub fn clean(root: &Path, before: &HashMap<Vec<u8>, Stamp>) -> Result<(), SandboxError> {
    let r = Root::open(root).map_err(|source| SandboxError::Io {
        action: "open",
        path: root.to_path_buf(),
        source,
    })?;
    let io = |rel: &[u8]| {
        let path = r.display(rel);
        move |source| SandboxError::Io {
            action: "clean",
            path,
            source,
        }
    };
    let join = |d: &[u8], n: &[u8]| [d, b"/", n].concat();
    for rel in LEFTOVERS {
        let rel = rel.as_bytes();
        if before.get(rel) != stamp(&r, rel).as_ref() {
            r.remove(rel).map_err(io(rel))?;
        }
    }
    for n in r.read_dir(b"etc/ssh").unwrap_or_default() {
        if n.starts_with(b"ssh_host_") {
            let rel = join(b"etc/ssh", &n);
            r.remove(&rel).map_err(io(&rel))?;
        }
    }
    // The mount point bwrap made for the host's resolv.conf.
    let resolv = &b"etc/resolv.conf"[..];
    if !before.contains_key(resolv)
        && r.stat(resolv).ok().flatten().is_some_and(|st| {
            st.st_size == 0 && rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()
        })
    {
        r.remove(resolv).map_err(io(resolv))?;
    }
    let mid = &b"etc/machine-id"[..];
    let now = stamp(&r, mid);
    if now.is_some() && before.get(mid) != now.as_ref() {
        r.write(mid, Attrs::FILE, b"uninitialized\n")
            .map_err(io(mid))?;
    }
    // Caches regenerated on demand, whose files embed the time they were made (man-db's
    // index.db) or are plain scratch (apt's pkgcache.bin).
    for d in [&b"var/cache/man"[..], b"var/cache/apt"] {
        let mut todo = vec![d.to_vec()];
        while let Some(dir) = todo.pop() {
            for n in r.read_dir(&dir).unwrap_or_default() {
                let rel = join(&dir, &n);
                match r.kind(&rel).map_err(io(&rel))? {
                    Some(crate::rootfs::Kind::Dir) => todo.push(rel),
                    Some(crate::rootfs::Kind::File)
                        if before.get(&rel) != stamp(&r, &rel).as_ref() =>
                    {
                        r.remove(&rel).map_err(io(&rel))?;
                    }
                    _ => {}
                }
            }
        }
    }
    for d in [&b"tmp"[..], b"var/tmp", b"run"] {
        for n in r.read_dir(d).unwrap_or_default() {
            let rel = join(d, &n);
            if !before.contains_key(&rel) {
                r.remove(&rel).map_err(io(&rel))?;
            }
        }
    }
    Ok(())
}

fn stamp(r: &Root, rel: &[u8]) -> Option<Stamp> {
    r.stat(rel).ok().flatten().map(|m| {
        (
            m.st_ino,
            m.st_ctime,
            m.st_ctime_nsec as i64,
            m.st_size as u64,
            m.st_mode,
        )
    })
}

/// Writes what changed under `root` since `before` into `w`: new and changed entries with
/// their metadata and extended attributes, whiteouts for what was removed. The root is left
/// as unpacking the layer would leave it (see [`crate::rootfs::apply`]), so later steps can
/// work on it: the regular files written get `mtime`, and what a layer does not hold
/// (device nodes, FIFOs, sockets, extended attributes other than [`crate::rootfs::xattr::kept`]
/// ones, such as the ACLs systemd's postinst sets on `/var/log/journal`) is removed.
pub fn diff(
    root: &Path,
    before: &HashMap<Vec<u8>, Stamp>,
    w: &mut LayerWriter,
    mtime: u64,
) -> Result<usize, SandboxError> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    use std::os::unix::ffi::OsStrExt;
    let after = snapshot(root)?;
    let mut changes: BTreeMap<&[u8], bool> = BTreeMap::new(); // path -> removed
    for (p, s) in &after {
        if before.get(p) != Some(s) {
            changes.insert(p, false);
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            // Only the topmost removed path needs a whiteout.
            let parent_gone = p
                .iter()
                .rposition(|b| *b == b'/')
                .is_some_and(|i| before.contains_key(&p[..i]) && !after.contains_key(&p[..i]));
            if !parent_gone {
                changes.insert(p, true);
            }
        }
    }
    let r = Root::open(root).map_err(|source| SandboxError::Io {
        action: "open",
        path: root.to_path_buf(),
        source,
    })?;
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let n = changes.len();
    for (rel, removed) in changes {
        let io = |source| SandboxError::Io {
            action: "read changed file",
            path: root.join(std::ffi::OsStr::from_bytes(rel)),
            source,
        };
        if removed {
            w.whiteout(rel).map_err(io)?;
            continue;
        }
        let Some(m) = r.stat(rel).map_err(io)? else {
            continue;
        };
        let meta = Meta {
            mode: m.st_mode & 0o7777,
            uid: m.st_uid as u64,
            gid: m.st_gid as u64,
        };
        let ft = rustix::fs::FileType::from_raw_mode(m.st_mode);
        if ft.is_dir() {
            w.xattrs(r.settle_xattrs(rel).map_err(io)?);
            w.dir(rel, meta).map_err(io)?;
        } else if ft.is_symlink() {
            let t = r.read_link(rel).map_err(io)?;
            w.symlink(rel, &t, meta).map_err(io)?;
        } else if ft.is_file() {
            if m.st_nlink > 1 {
                let id = (m.st_dev, m.st_ino);
                if let Some(first) = links.get(&id) {
                    w.hardlink(rel, first, meta).map_err(io)?;
                    continue;
                }
                links.insert(id, rel.to_vec());
            }
            // Opened without following anything outside the root; the size is the opened
            // file's own.
            let f = r.open_file(rel).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            // A `setcap` in a maintainer script changes only the attributes (and the ctime
            // the snapshot compares): the file is written again with them.
            w.xattrs(crate::rootfs::xattr::settle_fd(&f).map_err(io)?);
            w.file(rel, meta, len, BufReader::with_capacity(1 << 20, &f))
                .map_err(io)?;
            f.set_modified(time).map_err(io)?;
        } else {
            r.remove(rel).map_err(io)?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::CompressionSpec;
    use crate::recipe::Compression;
    use std::io::Read;

    fn entries(cache: &Cache, rec: &LayerRecord) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let f = File::open(cache.blob_path(&rec.digest)).unwrap();
        let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            out.push((path, e.header().entry_type(), data));
        }
        out
    }

    #[test]
    fn diff_holds_changes_whiteouts_and_hard_links_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["etc", "usr/share/doc/a", "var/log", "gone/deep"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/keep"), "same").unwrap();
        fs::write(root.join("etc/change"), "old").unwrap();
        fs::write(root.join("usr/share/doc/a/copyright"), "c").unwrap();
        fs::write(root.join("gone/deep/file"), "x").unwrap();
        let before = snapshot(&root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(root.join("etc/change"), "new").unwrap();
        fs::write(root.join("etc/added"), "added").unwrap();
        fs::hard_link(root.join("etc/added"), root.join("etc/added-link")).unwrap();
        fs::remove_file(root.join("usr/share/doc/a/copyright")).unwrap();
        fs::remove_dir_all(root.join("gone")).unwrap();
        fs::write(root.join("var/log/dpkg.log"), "log").unwrap();
        clean(&root, &before).unwrap();
        assert!(
            !root.join("var/log/dpkg.log").exists(),
            "leftovers are removed"
        );

        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let spec = CompressionSpec::new(Compression::Gzip, None);
        let mut w = LayerWriter::new(&cache, spec, 0).unwrap();
        diff(&root, &before, &mut w, 0).unwrap();
        let rec = w.finish("test".into()).unwrap();
        let got = entries(&cache, &rec);
        let names: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
        assert!(names.contains(&"etc/change"), "{names:?}");
        assert!(names.contains(&"etc/added"), "{names:?}");
        assert!(
            !names.contains(&"etc/keep"),
            "unchanged files stay out: {names:?}"
        );
        assert!(
            names.contains(&"usr/share/doc/a/.wh.copyright"),
            "{names:?}"
        );
        // Only the topmost removed directory gets a whiteout.
        assert!(names.contains(&".wh.gone"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("deep")), "{names:?}");
        let link = got.iter().find(|(p, _, _)| p == "etc/added-link").unwrap();
        assert_eq!(link.1, tar::EntryType::Link);
        let changed = got.iter().find(|(p, _, _)| p == "etc/change").unwrap();
        assert_eq!(changed.2, b"new");
    }
    /// What `setfacl -m u:1000:rx` writes: version 2, then (tag, perm, id) entries.
    fn acl() -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 5, 1000),
            (4, 5, u32::MAX),
            (0x10, 5, u32::MAX),
            (0x20, 5, u32::MAX),
        ] {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    fn xattr_names(p: &Path) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
        buf[..n]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn attributes_a_layer_cannot_hold_leave_the_root_with_the_diff() {
        use rustix::fs::{XattrFlags, setxattr};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("var/log/journal")).unwrap();
        fs::write(root.join("etc-file"), "x").unwrap();
        let before = snapshot(&root).unwrap();
        let journal = root.join("var/log/journal");
        let file = root.join("etc-file");
        let flags = XattrFlags::empty();
        setxattr(&journal, "system.posix_acl_access", &acl(), flags).unwrap();
        setxattr(&journal, "system.posix_acl_default", &acl(), flags).unwrap();
        setxattr(&file, "system.posix_acl_access", &acl(), flags).unwrap();
        setxattr(&file, "user.kept", b"1", flags).unwrap();
        assert_eq!(xattr_names(&journal).len(), 2, "the filesystem takes ACLs");

        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let spec = CompressionSpec::new(Compression::Gzip, None);
        let mut w = LayerWriter::new(&cache, spec, 0).unwrap();
        diff(&root, &before, &mut w, 0).unwrap();
        let rec = w.finish("test".into()).unwrap();
        assert!(
            xattr_names(&journal).is_empty(),
            "{:?}",
            xattr_names(&journal)
        );
        assert_eq!(xattr_names(&file), ["user.kept"]);
        // The layer holds the same: the user attribute, no ACL.
        let f = File::open(cache.blob_path(&rec.digest)).unwrap();
        let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        let mut pax = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for x in exts {
                    pax.push(format!("{path} {}", x.unwrap().key().unwrap()));
                }
            }
        }
        assert_eq!(pax, ["etc-file SCHILY.xattr.user.kept"]);
    }
}
