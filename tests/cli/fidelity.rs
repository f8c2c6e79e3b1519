//! The standing fidelity check against the reference tool (live: the Debian mirror comes from
//! this machine's apt configuration, like the boot test): the same package request built by
//! imgbuild and by `mmdebstrap --variant=minbase`, compared entry by entry (package list,
//! paths, kinds, modes, owners, symlink targets, extended attributes, content hashes). Every
//! difference must be on the commented allowlist below. Also builds the distroless recipe.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command as Std;

use sha2::{Digest as _, Sha256};

use super::apt_repo::{dpkg_list, unpack};
use super::proxmox::mirror;
use super::{Work, assert_ok, stdout, tool};

/// Exercises alternatives (vim, awk), capabilities (ping), triggers (man-db, shells),
/// diversions and conffiles (many), system users (sshd, man), debconf (locales, tzdata).
const PACKAGES: [&str; 7] = [
    "iputils-ping",
    "man-db",
    "vim",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "locales",
];

/// Both tools get the same build time, so date-derived content (shadow's `lastchg`) matches.
const EPOCH: &str = "1700000000";

/// Paths that may differ, and why. An entry ending in `/` or `_` is a prefix.
const ALLOWED: &[(&str, &str)] = &[
    (
        "dev/",
        "mmdebstrap (root mode) makes device nodes; an OCI image carries none, the runtime mounts /dev",
    ),
    (
        "etc/apt/sources.list",
        "mmdebstrap writes its one-line sources.list",
    ),
    (
        "etc/apt/sources.list.d/debian.sources",
        "imgbuild writes the recipe's source as deb822",
    ),
    (
        "etc/apt/keyrings/debian.gpg",
        "imgbuild copies the source's key for Signed-By",
    ),
    (
        "etc/fstab",
        "mmdebstrap's 'UNCONFIGURED FSTAB' placeholder, as debootstrap writes",
    ),
    ("etc/hostname", "mmdebstrap copies the build host's"),
    ("etc/resolv.conf", "mmdebstrap copies the build host's"),
    ("etc/passwd-", "backups imgbuild removes"),
    ("etc/group-", "backups imgbuild removes"),
    ("etc/shadow-", "backups imgbuild removes"),
    ("etc/gshadow-", "backups imgbuild removes"),
    ("var/lib/dpkg/status-old", "backups imgbuild removes"),
    ("var/lib/dpkg/diversions-old", "backups imgbuild removes"),
    (
        "var/cache/debconf/config.dat-old",
        "backups imgbuild removes",
    ),
    (
        "var/cache/debconf/templates.dat-old",
        "backups imgbuild removes",
    ),
    (
        "etc/ssh/ssh_host_",
        "host keys imgbuild removes: every machine must make its own",
    ),
    (
        "var/cache/man/",
        "man-db's index, rebuilt on demand, embeds the time it was made",
    ),
    (
        "run/",
        "a tmpfs at run time; imgbuild removes what scripts leave there",
    ),
    (
        "var/cache/apt/archives/lock",
        "apt's run-time lock: imgbuild never runs apt",
    ),
    (
        "var/lib/apt/lists/lock",
        "apt's run-time lock: imgbuild never runs apt",
    ),
    (
        "var/cache/apt/archives/partial",
        "apt makes it _apt:root 0700 when it first runs",
    ),
    (
        "var/lib/apt/lists/partial",
        "apt makes it _apt:root 0700 when it first runs",
    ),
];

/// Files whose lines are a set, written in the order packages happened to be configured.
const LINE_SETS: &[&str] = &["etc/shells", "var/lib/dpkg/triggers/File"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// sha256 of a file, target of a symlink, rdev of a device.
    data: String,
    xattrs: String,
}

pub(crate) fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let ft = md.file_type();
        let (kind, data) = if ft.is_symlink() {
            ('l', fs::read_link(e.path()).unwrap().display().to_string())
        } else if ft.is_dir() {
            ('d', String::new())
        } else if ft.is_file() {
            (
                'f',
                hex::encode(Sha256::digest(fs::read(e.path()).unwrap())),
            )
        } else {
            ('o', md.rdev().to_string())
        };
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        out.insert(
            rel,
            Entry {
                kind,
                mode: if kind == 'l' {
                    0
                } else {
                    md.permissions().mode() & 0o7777
                },
                uid: md.uid(),
                gid: md.gid(),
                data,
                xattrs: String::new(),
            },
        );
    }
    // Extended attributes in one getfattr run (capabilities, user.*, trusted.*).
    let o = Std::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "^(security\\.capability|user\\.|trusted\\.)",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .unwrap();
    let mut current = None;
    for line in stdout(&o).lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            current = Path::new(p)
                .strip_prefix(root)
                .ok()
                .map(|r| r.display().to_string());
        } else if let (Some(c), true) = (&current, line.contains('='))
            && let Some(e) = out.get_mut(c)
        {
            e.xattrs.push_str(line);
            e.xattrs.push(';');
        }
    }
    out
}

fn allowed(path: &str) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(p, _)| {
            if p.ends_with('/') || p.ends_with('_') {
                path.starts_with(p)
            } else {
                path == *p
            }
        })
        .map(|(_, why)| *why)
}

fn lines(path: &Path) -> BTreeSet<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn auto_installed(root: &Path) -> BTreeSet<String> {
    fs::read_to_string(root.join("var/lib/apt/extended_states"))
        .unwrap_or_default()
        .split("\n\n")
        .filter(|p| p.contains("Auto-Installed: 1"))
        .filter_map(|p| {
            p.lines()
                .next()?
                .strip_prefix("Package: ")
                .map(str::to_string)
        })
        .collect()
}

/// Builds bookworm minbase plus `packages` for `platform` with imgbuild (the recipe
/// `recipes/NAME.toml`, at the shared build time) and returns the unpacked root.
fn build_minbase(
    work: &Work,
    mirror: &str,
    name: &str,
    platform: &str,
    packages: &[&str],
) -> std::path::PathBuf {
    let recipe = work.path(&format!("recipes/{name}.toml"));
    let list: Vec<String> = packages.iter().map(|p| format!("\"{p}\"")).collect();
    fs::write(
        &recipe,
        format!(
            "[image]\nname = \"{name}\"\nbase = \"scratch\"\nplatform = \"{platform}\"\n\n\
             [apt]\nbootstrap = \"minbase\"\npackages = [{}]\n\n\
             [[apt.sources]]\nname = \"debian\"\nuri = \"${{var.mirror}}\"\nsuite = \"bookworm\"\n\
             components = [\"main\"]\nkey = \"keys/debian-archive-keyring.gpg\"\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let out = format!("out/{name}");
    let o = work
        .cmd()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["--var", &format!("mirror={mirror}"), "build"])
        .arg(&recipe)
        .arg("--out")
        .arg(work.path(&out))
        .output()
        .unwrap();
    assert_ok(&o);
    unpack(work, &out)
}

/// `mmdebstrap --variant=minbase` of bookworm into `dir` (root mode, the shared build time).
fn mmdebstrap(mirror: &str, dir: &Path, extra: &[&str]) {
    let o = Std::new("mmdebstrap")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["--quiet", "--mode=root", "--variant=minbase"])
        .args(extra)
        .arg("bookworm")
        .arg(dir)
        .arg(format!("deb {mirror} bookworm main"))
        .output()
        .expect("mmdebstrap (Debian package mmdebstrap): .ci/run installs it");
    assert_ok(&o);
}

#[test]
fn an_image_matches_mmdebstrap_for_the_same_packages() {
    let mirror = mirror();
    let work = Work::setup();
    let started = std::time::Instant::now();
    let ours = build_minbase(&work, &mirror, "fidelity", "linux/amd64", &PACKAGES);
    let imgbuild_time = started.elapsed();

    let reference = work.path("mmdebstrap");
    let started = std::time::Instant::now();
    let include = format!("--include={}", PACKAGES.join(","));
    mmdebstrap(&mirror, &reference, &[&include]);
    let mmdebstrap_time = started.elapsed();

    // The same packages, versions and states.
    let (a, b) = (dpkg_list(&ours), dpkg_list(&reference));
    assert_eq!(a, b, "package lists differ");
    let packages = a.lines().count();

    let (ta, tb) = (tree(&ours), tree(&reference));
    let mut same = 0usize;
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for path in ta.keys().chain(tb.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (ta.get(path), tb.get(path));
        if x == y {
            same += 1;
            continue;
        }
        if let (Some(x), Some(y)) = (x, y)
            && LINE_SETS.contains(&path.as_str())
            && (Entry {
                data: String::new(),
                ..x.clone()
            }) == (Entry {
                data: String::new(),
                ..y.clone()
            })
            && lines(&ours.join(path)) == lines(&reference.join(path))
        {
            *by_reason
                .entry("same lines, in another order (the order packages were configured in)")
                .or_default() += 1;
            continue;
        }
        if path == "var/lib/apt/extended_states" {
            // mmdebstrap installs the Essential set and its dependencies with dpkg (no marks);
            // imgbuild marks every package not asked for, as apt-get does. Its marks must
            // include mmdebstrap's.
            let (mine, theirs) = (auto_installed(&ours), auto_installed(&reference));
            let missing: Vec<_> = theirs.difference(&mine).collect();
            assert!(
                missing.is_empty(),
                "auto-installed in mmdebstrap only: {missing:?}"
            );
            *by_reason
                .entry(
                    "extended_states: mmdebstrap's auto-installed marks are a subset of imgbuild's",
                )
                .or_default() += 1;
            continue;
        }
        match allowed(path) {
            Some(why) => *by_reason.entry(why).or_default() += 1,
            None => unexpected.push(format!("{path}\n  imgbuild:   {x:?}\n  mmdebstrap: {y:?}")),
        }
    }
    let caps = |root: &Path| {
        tool("getcap", &["-r", root.join("usr").to_str().unwrap()])
            .lines()
            .map(|l| l.replace(root.to_str().unwrap(), ""))
            .collect::<BTreeSet<_>>()
    };
    let (ca, cb) = (caps(&ours), caps(&reference));
    assert_eq!(ca, cb, "file capabilities");
    assert!(
        ca.iter()
            .any(|l| l.contains("/usr/bin/ping cap_net_raw=ep")),
        "{ca:?}"
    );

    eprintln!(
        "\n| fidelity: imgbuild vs mmdebstrap (bookworm minbase + {}) | |",
        PACKAGES.join(" ")
    );
    eprintln!("|---|---:|");
    eprintln!("| packages (same name, version, arch, state) | {packages} |");
    eprintln!(
        "| paths: imgbuild / mmdebstrap | {} / {} |",
        ta.len(),
        tb.len()
    );
    eprintln!("| identical (kind, mode, owner, content or target, xattrs) | {same} |");
    for (why, n) in &by_reason {
        eprintln!("| allowed: {why} | {n} |");
    }
    eprintln!("| unexpected differences | {} |", unexpected.len());
    eprintln!("| file capabilities (both) | {} |", ca.len());
    eprintln!(
        "| time: imgbuild / mmdebstrap (cold) | {:.1} s / {:.1} s |",
        imgbuild_time.as_secs_f64(),
        mmdebstrap_time.as_secs_f64()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected differences:\n{}",
        unexpected.join("\n")
    );
}

/// `recipes/distroless-static.toml` builds from the live mirror: no shell, tzdata configured
/// chrootless (its postinst set /etc/localtime inside the image), nothing of the host's.
/// Another platform under emulation: bookworm minbase for linux/arm64, built by imgbuild on
/// this amd64 machine (the package scripts run under qemu-user) and by `mmdebstrap
/// --arch=arm64`: the same packages, versions and states, and the same users.
#[test]
fn an_arm64_minbase_matches_mmdebstrap_for_arm64() {
    let mirror = mirror();
    let work = Work::setup();
    let ours = build_minbase(&work, &mirror, "minbase-arm64", "linux/arm64", &[]);
    let reference = work.path("mmdebstrap-arm64");
    mmdebstrap(&mirror, &reference, &["--arch=arm64"]);
    let (a, b) = (dpkg_list(&ours), dpkg_list(&reference));
    assert_eq!(a, b, "package lists differ");
    assert!(a.contains("ii  libc6 "), "{a}");
    for f in ["etc/passwd", "etc/group"] {
        assert_eq!(lines(&ours.join(f)), lines(&reference.join(f)), "{f}");
    }
    // The programs are arm64 ones: ELF machine 183 (EM_AARCH64).
    let elf = fs::read(ours.join("usr/bin/dpkg")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183);
}

#[test]
fn the_distroless_recipe_builds_from_the_mirror() {
    let work = Work::setup();
    let o = work
        .cmd()
        .args(["--var", &format!("mirror={}", mirror()), "build"])
        .arg(work.path("recipes/distroless-static.toml"))
        .arg("--out")
        .arg(work.path("out/distroless"))
        .output()
        .unwrap();
    assert_ok(&o);
    let rootfs = unpack(&work, "out/distroless");
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists());
    let list = dpkg_list(&rootfs);
    for want in ["ii  tzdata ", "ii  media-types ", "ii  debconf "] {
        assert!(list.contains(want), "{want}: {list}");
    }
    assert_eq!(
        fs::read_link(rootfs.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Etc/UTC")
    );
    assert!(
        fs::read_to_string(rootfs.join("etc/passwd"))
            .unwrap()
            .contains("nonroot:x:65532:")
    );
}

/// Virtual packages with several providers (issue 20's five real cases): `imgbuild lock` picks
/// what `apt-get install -s --no-install-recommends` picks in an mmdebstrap minbase chroot of
/// the same mirror, every package and version.
#[test]
fn providers_of_virtual_packages_are_chosen_as_apt_chooses_them() {
    let mirror = mirror();
    let work = Work::setup();
    let chroot = work.path("minbase");
    let o = Std::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", "--skip=cleanup/apt/lists"])
        .arg("bookworm")
        .arg(&chroot)
        .arg(format!("deb {mirror} bookworm main"))
        .output()
        .unwrap();
    assert_ok(&o);
    let locked = |name: &str, packages: &[&str]| -> BTreeSet<String> {
        let list: Vec<String> = packages.iter().map(|p| format!("\"{p}\"")).collect();
        let recipe = work.path(&format!("recipes/{name}.toml"));
        fs::write(
            &recipe,
            format!(
                "[image]\nname = \"{name}\"\nbase = \"scratch\"\n\n\
                 [apt]\nbootstrap = \"minbase\"\npackages = [{}]\n\n\
                 [[apt.sources]]\nname = \"debian\"\nuri = \"${{var.mirror}}\"\nsuite = \"bookworm\"\n\
                 components = [\"main\"]\nkey = \"keys/debian-archive-keyring.gpg\"\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let o = work
            .cmd()
            .args(["--quiet", "--var", &format!("mirror={mirror}"), "lock"])
            .arg(&recipe)
            .output()
            .unwrap();
        assert_ok(&o);
        let lock: toml::Value =
            toml::from_str(&fs::read_to_string(recipe.with_extension("lock")).unwrap()).unwrap();
        lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                )
            })
            .collect()
    };
    let base = locked("minbase", &[]);
    let mut rows = Vec::new();
    for (request, apt_choice) in [
        ("sn", "mailutils"),
        ("fwupd", "systemd"),
        ("xletters", "wamerican"),
        ("php8.2-amqp", "php8.2-phpdbg"),
        ("afterstep", "zutty"),
    ] {
        let ours: BTreeSet<String> = locked("request", &[request])
            .difference(&base)
            .cloned()
            .collect();
        let o = Std::new("chroot")
            .arg(&chroot)
            .args([
                "apt-get",
                "install",
                "-s",
                "--no-install-recommends",
                request,
            ])
            .output()
            .unwrap();
        assert_ok(&o);
        let apt: BTreeSet<String> = stdout(&o)
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?;
                let version = w.next()?.trim_start_matches('(');
                Some(format!("{name}={version}"))
            })
            .collect();
        assert!(
            apt.iter().any(|p| p.starts_with(&format!("{apt_choice}="))),
            "apt itself no longer picks {apt_choice} for {request}: {apt:?}"
        );
        let only_ours: Vec<_> = ours.difference(&apt).collect();
        let only_apt: Vec<_> = apt.difference(&ours).collect();
        assert!(
            only_ours.is_empty() && only_apt.is_empty(),
            "{request}: imgbuild only {only_ours:?}, apt only {only_apt:?}"
        );
        rows.push(format!("| {request} | {apt_choice} | {} |", apt.len()));
    }
    eprintln!(
        "\n| request | provider apt and imgbuild chose | packages, all equal |\n|---|---|---:|"
    );
    for r in rows {
        eprintln!("{r}");
    }
}
