//! Configuring packages in an image without a shell (distroless-style: `base = "scratch"`
//! and packages, no bootstrap), where `dpkg --configure` cannot run inside the image.
//!
//! - Packages with nothing to run (no `preinst`, `postinst` or `config` script) are marked
//!   installed the way dpkg marks them: `Status: install ok installed`, each new conffile
//!   moved from `PATH.dpkg-new` into place and the md5 of the packaged version recorded in
//!   `Conffiles:`. No program runs.
//! - Packages with scripts run chrootless, as mmdebstrap's chrootless mode does: the host's
//!   dpkg with `--root` and `--force-script-chrootless` (scripts get `DPKG_ROOT`) and the
//!   host's shell. Unlike mmdebstrap, never on the host itself: inside bubblewrap, the host's
//!   `/usr` read-only, the image the only real writable tree (at `/target`), and `/etc`,
//!   `/var`, `/root`, ... empty scratch directories. A script that does not honour
//!   `DPKG_ROOT` fails on the read-only `/usr` or writes into the scratch directories; the
//!   build then stops, naming the packages, the paths, and the fix (a shell in the image).
//!   Measured on this kind of host: `mmdebstrap --mode=chrootless` with ca-certificates
//!   rewrote the host's own `/etc/ssl/certs/ca-certificates.crt`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::Digest as _;

use super::sandbox::{self, SandboxError};
use crate::lock::LockedPackage;
use crate::rootfs::{Attrs, Root};

#[derive(Debug, thiserror::Error)]
pub enum ChrootlessError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the image has no /bin/sh, so the maintainer scripts of {packages} ran chrootless (the \
         host's dpkg and shell, DPKG_ROOT set), and they {what}\nGive the image a shell so they \
         run inside it: `[apt] bootstrap = \"minbase\"`, a base image, or a package that \
         provides /bin/sh (dash)"
    )]
    Unsupported { packages: String, what: String },
    #[error(
        "the image has no /bin/sh and the maintainer scripts of {packages} must run chrootless, \
         which needs dpkg on this machine (not found in /usr/bin); install dpkg, or give the \
         image a shell"
    )]
    NoHostDpkg { packages: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

const STATUS: &[u8] = b"var/lib/dpkg/status";
/// Scripts `dpkg --configure` (or the preinst imgbuild runs first) would execute.
const SCRIPTS: [&str; 3] = ["preinst", "postinst", "config"];
/// Host directories a chrootless script sees as empty scratch space.
const SCRATCH: [&str; 8] = ["etc", "var", "root", "run", "home", "opt", "srv", "mnt"];

/// Files the chrootless sandbox sees in its otherwise empty `/etc`.
const SEEDS: [(&str, &str); 3] = [
    ("passwd", PASSWD),
    ("group", GROUP),
    (
        "debconf.conf",
        "Config: configdb\nTemplates: templatedb\n\n\
         Name: config\nDriver: File\nMode: 644\nReject-Type: password\n\
         Filename: /target/var/cache/debconf/config.dat\n\n\
         Name: passwords\nDriver: File\nMode: 600\nBackup: false\nRequired: false\n\
         Accept-Type: password\nFilename: /target/var/cache/debconf/passwords.dat\n\n\
         Name: configdb\nDriver: Stack\nStack: config, passwords\n\n\
         Name: templatedb\nDriver: File\nMode: 644\n\
         Filename: /target/var/cache/debconf/templates.dat\n",
    ),
];

/// Debian's static users and groups (base-passwd's master files, the same ids on every
/// Debian system), for scripts that `chown root:mail` when the image has no `/etc/passwd`
/// yet; an image that has them gets its own.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
news:x:9:9:news:/var/spool/news:/usr/sbin/nologin
uucp:x:10:10:uucp:/var/spool/uucp:/usr/sbin/nologin
proxy:x:13:13:proxy:/bin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
list:x:38:38:Mailing List Manager:/var/list:/usr/sbin/nologin
irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
news:x:9:
uucp:x:10:
man:x:12:
proxy:x:13:
kmem:x:15:
dialout:x:20:
fax:x:21:
voice:x:22:
cdrom:x:24:
floppy:x:25:
tape:x:26:
sudo:x:27:
audio:x:29:
dip:x:30:
www-data:x:33:
backup:x:34:
operator:x:37:
list:x:38:
irc:x:39:
src:x:40:
shadow:x:42:
utmp:x:43:
video:x:44:
sasl:x:45:
plugdev:x:46:
staff:x:50:
games:x:60:
users:x:100:
nogroup:x:65534:
";

/// Whether `/bin/sh` resolves to a file inside the image.
pub fn has_shell(root: &Root) -> bool {
    root.open_followed(b"bin/sh").is_ok()
}

/// The packages among `packages` that have a maintainer script to run.
fn scripted(root: &Root, packages: &[LockedPackage]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            [p.name.clone(), format!("{}:{}", p.name, p.arch)]
                .iter()
                .any(|info| {
                    SCRIPTS.iter().any(|s| {
                        let rel = format!("var/lib/dpkg/info/{info}.{s}");
                        root.kind(rel.as_bytes()).is_ok_and(|k| k.is_some())
                    })
                })
        })
        .map(|p| p.name.clone())
        .collect()
}

/// Configures the unpacked packages of the image at `dir` (opened as `root`), which has no
/// shell: see the module documentation.
pub fn configure(
    dir: &Path,
    root: &Root,
    packages: &[LockedPackage],
    mtime: u64,
) -> Result<(), ChrootlessError> {
    let scripted = scripted(root, packages);
    if scripted.is_empty() {
        return mark_installed(root);
    }
    run_host_dpkg(dir, root, packages, &scripted, mtime)
}

/// An I/O error on `rel` inside `root`, for `map_err`.
fn io_err(
    root: &Root,
    action: &'static str,
    rel: &[u8],
) -> impl FnOnce(io::Error) -> ChrootlessError + use<> {
    let path = root.display(rel);
    move |source| ChrootlessError::Io {
        action,
        path,
        source,
    }
}

/// dpkg's `--configure` for packages without scripts: conffiles into place, status
/// `installed`. The status file is edited line by line, so everything else in it (the base
/// image's entries, field order) stays as it was.
fn mark_installed(root: &Root) -> Result<(), ChrootlessError> {
    let io = |action, rel: &[u8]| io_err(root, action, rel);
    let text = root
        .read_followed(STATUS, 1 << 30)
        .map_err(io("read", STATUS))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let mut out = String::with_capacity(text.len());
    for para in text.split_inclusive("\n\n") {
        let unpacked = para
            .lines()
            .any(|l| l.trim_end() == "Status: install ok unpacked");
        if !unpacked {
            out.push_str(para);
            continue;
        }
        let mut in_conffiles = false;
        for line in para.split_inclusive('\n') {
            let body = line.trim_end_matches('\n');
            if body == "Status: install ok unpacked" {
                out.push_str("Status: install ok installed\n");
                continue;
            }
            if !body.starts_with(' ') {
                in_conffiles = body.starts_with("Conffiles:");
            } else if in_conffiles && let Some(path) = body.trim().strip_suffix(" newconffile") {
                let md5 = place_conffile(root, path)?;
                out.push_str(&format!(" {path} {md5}\n"));
                continue;
            }
            out.push_str(line);
        }
    }
    root.write(STATUS, Attrs::FILE, out.as_bytes())
        .map_err(io("write", STATUS))
}

/// Moves a new conffile into place as `dpkg --force-confold` would for a fresh install (an
/// existing, different file is kept and the packaged one saved as `PATH.dpkg-dist`), and
/// returns the packaged version's md5.
fn place_conffile(root: &Root, path: &str) -> Result<String, ChrootlessError> {
    let rel = path.trim_start_matches('/').as_bytes().to_vec();
    let new = [&rel[..], b".dpkg-new"].concat();
    let io = |action, rel: &[u8]| io_err(root, action, rel);
    let packaged = match root.open_file(&new) {
        Ok(f) => Some(f),
        Err(e) if crate::rootfs::missing(&e) => None,
        Err(e) => return Err(io("open", &new)(e)),
    };
    let Some(mut f) = packaged else {
        // Already in place (or a directory/symlink conffile): hash what is there.
        let mut f = root.open_file(&rel).map_err(io("open", &rel))?;
        return md5_of(&mut f).map_err(io("read", &rel));
    };
    let md5 = md5_of(&mut f).map_err(io("read", &new))?;
    let existing = match root.open_file(&rel) {
        Ok(mut f) => Some(md5_of(&mut f).map_err(io("read", &rel))?),
        Err(_) => None,
    };
    match existing {
        Some(old) if old != md5 => {
            let dist = [&rel[..], b".dpkg-dist"].concat();
            root.rename(&new, &dist).map_err(io("rename", &new))?;
        }
        Some(_) => root.remove(&new).map_err(io("remove", &new))?,
        None => root.rename(&new, &rel).map_err(io("rename", &new))?,
    }
    Ok(md5)
}

fn md5_of(r: &mut impl io::Read) -> io::Result<String> {
    let mut h = md5::Md5::new();
    io::copy(r, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The host's dpkg and shell configure the image at `/target` inside bubblewrap (see the
/// module documentation); afterwards the scratch directories must be empty.
fn run_host_dpkg(
    dir: &Path,
    root: &Root,
    packages: &[LockedPackage],
    scripted: &[String],
    mtime: u64,
) -> Result<(), ChrootlessError> {
    let names = scripted.join(", ");
    if !Path::new("/usr/bin/dpkg").is_file() {
        return Err(ChrootlessError::NoHostDpkg { packages: names });
    }
    let bwrap = sandbox::bwrap()?;
    let parent = dir.parent().unwrap_or(dir);
    let scratch = tempfile::Builder::new()
        .prefix("chrootless-")
        .tempdir_in(parent)
        .map_err(|source| ChrootlessError::Io {
            action: "create a scratch directory in",
            path: parent.to_path_buf(),
            source,
        })?;
    let mut cmd = Command::new(&bwrap);
    cmd.args(["--ro-bind", "/usr", "/usr"]);
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => {
                cmd.args(["--symlink", target, link]);
            }
            Ok(_) => {
                cmd.args(["--ro-bind", link, link]);
            }
            Err(_) => {}
        }
    }
    let mkdir = |p: &Path| {
        std::fs::create_dir(p).map_err(|source| ChrootlessError::Io {
            action: "create",
            path: p.to_path_buf(),
            source,
        })
    };
    for d in SCRATCH {
        let host = scratch.path().join(d);
        mkdir(&host)?;
        cmd.arg("--bind").arg(&host).arg(format!("/{d}"));
    }
    // Read-only files on top of the scratch /etc: names for `chown root:root`, and debconf
    // (the host's, which tzdata's and others' scripts load) told to keep its database in the
    // image, where a chroot run would have kept it.
    let seeds = scratch.path().join("seeds");
    mkdir(&seeds)?;
    for (name, body) in SEEDS {
        let host = seeds.join(name);
        let own = match name {
            "passwd" | "group" => root
                .read_followed(format!("etc/{name}").as_bytes(), 1 << 24)
                .ok(),
            _ => None,
        };
        std::fs::write(&host, own.as_deref().unwrap_or(body.as_bytes())).map_err(|source| {
            ChrootlessError::Io {
                action: "write",
                path: host.clone(),
                source,
            }
        })?;
        cmd.arg("--ro-bind").arg(&host).arg(format!("/etc/{name}"));
    }
    cmd.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
    cmd.arg("--bind").arg(dir).arg("/target");
    cmd.args([
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--clearenv",
    ]);
    // Root's file powers only (owners, modes, capabilities, device nodes): no mounts, no
    // ptrace, nothing that could reach past the read-only binds.
    cmd.args(["--cap-drop", "ALL"]);
    for cap in [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_SETFCAP",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_MKNOD",
    ] {
        cmd.args(["--cap-add", cap]);
    }
    sandbox::set_env(&mut cmd, mtime);
    cmd.args(["--setenv", "DEBCONF_SYSTEMRC", "/etc/debconf.conf"]);
    // The preinst scripts first (dpkg would have run them before unpacking, from its
    // tmp.ci directory), then dpkg: the Essential packages, then the rest.
    let tmp_ci = super::run::TMP_CI;
    let mut script = String::from("set -e\n");
    for p in packages {
        for info in [p.name.clone(), format!("{}:{}", p.name, p.arch)] {
            // Staged one at a time inside the script, from copies made here.
            let staged = format!("var/lib/dpkg/imgbuild-preinst/{info}");
            if super::run::stage_control(root, &info).map_err(|source| ChrootlessError::Io {
                action: "stage a preinst in",
                path: dir.to_path_buf(),
                source,
            })? {
                root.rename(tmp_ci.as_bytes(), staged.as_bytes())
                    .map_err(|source| ChrootlessError::Io {
                        action: "stage a preinst in",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                script.push_str(&format!(
                    "rm -rf /target/{tmp_ci}; mv '/target/{staged}' /target/{tmp_ci}\n\
                     DPKG_MAINTSCRIPT_PACKAGE='{}' DPKG_MAINTSCRIPT_ARCH='{}' DPKG_MAINTSCRIPT_NAME=preinst DPKG_ROOT=/target DPKG_ADMINDIR=/target/var/lib/dpkg /bin/sh /target/{tmp_ci}/preinst install\n",
                    p.name, p.arch
                ));
            }
        }
    }
    script.push_str(&format!(
        "rm -rf /target/{tmp_ci} /target/var/lib/dpkg/imgbuild-preinst\n"
    ));
    let essential = super::run::unpacked_essential(root);
    let dpkg = "dpkg --root=/target --force-script-chrootless --force-confdef --force-confold";
    if !essential.is_empty() {
        script.push_str(&format!("{dpkg} --configure {}\n", essential.join(" ")));
    }
    script.push_str(&format!("exec {dpkg} --configure -a\n"));
    cmd.args(["/bin/sh", "-c", &script]);
    let out = cmd
        .output()
        .map_err(|e| SandboxError::Unavailable(format!("cannot run {}: {e}", bwrap.display())))?;
    let wrote = written(scratch.path(), &seeds);
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        // dpkg names the packages whose scripts failed; name those, not every one that ran.
        let failed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("dpkg: error processing package "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        return Err(ChrootlessError::Unsupported {
            packages: if failed.is_empty() {
                names
            } else {
                failed.join(", ")
            },
            what: format!("failed ({}):\n{}", out.status, tail.join("\n")),
        });
    }
    if !wrote.is_empty() {
        return Err(ChrootlessError::Unsupported {
            packages: names,
            what: format!(
                "wrote outside the image (their scripts do not honour DPKG_ROOT): {}",
                wrote.join(", ")
            ),
        });
    }
    Ok(())
}

/// What appeared in the scratch directories (files or directories), as the paths a script
/// wrote (at most 10); the seeded files' mount points are not writes.
fn written(scratch: &Path, seeds: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(scratch)
        .min_depth(2)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        if e.path().starts_with(seeds)
            || (e.path().parent() == Some(&scratch.join("etc"))
                && SEEDS.iter().any(|(n, _)| e.file_name() == *n))
        {
            continue;
        }
        if let Ok(rel) = e.path().strip_prefix(scratch) {
            out.push(format!("/{}", rel.display()));
        }
        if out.len() == 10 {
            out.push("...".into());
            break;
        }
    }
    out
}
