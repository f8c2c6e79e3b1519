//! Steps that run programs inside the image, in the [`sandbox`](super::sandbox): dpkg's
//! configure, `pip install` of pinned wheels, build packages and `[[run]]` commands. Each
//! one runs on the build's [`LiveRoot`] (the image so far), cleans non-reproducible
//! leftovers, and turns the difference into a layer.

use super::RealizeError;
use super::live::LiveRoot;
use super::sandbox::{self, SandboxError};
use crate::cache::{Cache, LayerRecord};
use crate::lock::{LockedPackage, LockedPip};
use crate::plan::{Plan, Step};
use crate::rootfs::{Attrs, Root};

/// `dpkg --configure -a` over the image so far. The packages' `preinst install` scripts run
/// first, as dpkg would have run them before unpacking, with the environment dpkg gives
/// maintainer scripts; services are kept from starting with a `policy-rc.d`, as debootstrap
/// does.
pub fn configure(
    plan: &Plan,
    step: &Step,
    packages: &[LockedPackage],
    cache: &Cache,
    live: &mut LiveRoot,
    layers: &[LayerRecord],
    package_layers: std::ops::Range<usize>,
) -> Result<LayerRecord, RealizeError> {
    live.step(plan, step, cache, layers, package_layers, |root| {
        let confined = Root::open(root).map_err(|source| {
            RealizeError::Sandbox(SandboxError::Io {
                action: "open",
                path: root.to_path_buf(),
                source,
            })
        })?;
        if !super::chrootless::has_shell(&confined) {
            return Ok(super::chrootless::configure(
                root, &confined, packages, plan.mtime,
            )?);
        }
        let bwrap = &sandbox::bwrap()?;
        let run = |label: &str, script: &str, env: &[(&str, &str)]| {
            sandbox::run(bwrap, root, label, script, env, false, plan.mtime)
        };
        run(
            "install policy-rc.d",
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
            &[],
        )?;
        let io = |source| {
            RealizeError::Sandbox(SandboxError::Io {
                action: "stage a preinst in",
                path: root.to_path_buf(),
                source,
            })
        };
        for p in packages {
            for info in [p.name.clone(), format!("{}:{}", p.name, p.arch)] {
                if !stage_control(&confined, &info).map_err(io)? {
                    continue;
                }
                run(
                    &format!("{info} preinst install"),
                    &format!("exec /{TMP_CI}/preinst install"),
                    &[
                        ("DPKG_MAINTSCRIPT_PACKAGE", &p.name),
                        ("DPKG_MAINTSCRIPT_ARCH", &p.arch),
                        ("DPKG_MAINTSCRIPT_NAME", "preinst"),
                        ("DPKG_ADMINDIR", "/var/lib/dpkg"),
                        ("DPKG_ROOT", ""),
                    ],
                )?;
                confined.remove(TMP_CI.as_bytes()).map_err(io)?;
            }
        }
        // An upgraded package keeps a conffile the base image changed (as apt-get -y would
        // have to be told); nothing may prompt. The Essential packages are configured first,
        // as debootstrap and mmdebstrap do: others' scripts rely on them being set up (passwd's
        // `pwconv` reads login's /etc/login.defs for the password aging fields).
        let essential = unpacked_essential(&confined);
        if !essential.is_empty() {
            run(
                "dpkg --configure (Essential packages)",
                &format!(
                    "exec dpkg --force-confdef --force-confold --configure {}",
                    essential.join(" ")
                ),
                &[],
            )?;
        }
        run(
            "dpkg --configure -a",
            "exec dpkg --force-confdef --force-confold --configure -a",
            &[],
        )?;
        run("remove policy-rc.d", "rm -f /usr/sbin/policy-rc.d", &[])?;
        Ok(())
    })
}

/// Where dpkg puts a package's control files while it installs it, and runs its preinst from.
pub(super) const TMP_CI: &str = "var/lib/dpkg/tmp.ci";

/// Copies the info files of `info` (`NAME` or `NAME:ARCH`) into [`TMP_CI`] under their
/// control-file names, as dpkg has them when it runs a preinst (debconf, for one, reads the
/// package's templates and its own name from there). False when there is no preinst.
pub(super) fn stage_control(root: &Root, info: &str) -> std::io::Result<bool> {
    let prefix = format!("{info}.");
    let preinst = format!("var/lib/dpkg/info/{prefix}preinst");
    if root.kind(preinst.as_bytes())?.is_none() {
        return Ok(false);
    }
    root.remove(TMP_CI.as_bytes())?;
    root.mkdir(
        TMP_CI.as_bytes(),
        Attrs {
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    )?;
    // The package's control file, as the status file has it without dpkg's own fields: debconf
    // reads the package name from it when a preinst loads its templates.
    let status = root.read_followed(b"var/lib/dpkg/status", 1 << 30)?;
    let status = String::from_utf8_lossy(&status);
    let (name, arch) = match info.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (info, None),
    };
    let paras = crate::apt::control::parse(&status).unwrap_or_default();
    if let Some(p) = paras.iter().find(|p| {
        p.get("Package") == Some(name) && arch.is_none_or(|a| p.get("Architecture") == Some(a))
    }) {
        let mut control = String::new();
        for (k, v) in p
            .fields
            .iter()
            .filter(|(k, _)| !matches!(*k, "Status" | "Conffiles" | "Config-Version"))
        {
            let sep = if v.starts_with('\n') { "" } else { " " };
            control.push_str(&format!("{k}:{sep}{v}\n"));
        }
        root.write(
            format!("{TMP_CI}/control").as_bytes(),
            Attrs::FILE,
            control.as_bytes(),
        )?;
    }
    for name in root.read_dir(b"var/lib/dpkg/info")? {
        let Some(part) = name.strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        if part == b"list" || part.contains(&b'.') {
            continue;
        }
        let from = [&b"var/lib/dpkg/info/"[..], &name].concat();
        let mode = root.stat(&from)?.map_or(0o644, |st| st.st_mode & 0o7777);
        let data = root.read_followed(&from, 1 << 30)?;
        let to = [TMP_CI.as_bytes(), b"/", part].concat();
        root.write(
            &to,
            Attrs {
                mode,
                uid: 0,
                gid: 0,
            },
            &data,
        )?;
    }
    Ok(true)
}

/// The Essential packages dpkg has unpacked but not configured, with the unpacked packages
/// they depend on (`Depends`, `Pre-Depends`, through `Provides`), as debootstrap and mmdebstrap
/// install that set before anything else: `NAME`, or `NAME:ARCH` for `Multi-Arch: same`.
pub(super) fn unpacked_essential(root: &Root) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let Ok(text) = root.read_followed(b"var/lib/dpkg/status", 1 << 30) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    let Ok(paras) = crate::apt::control::parse(&text) else {
        return Vec::new();
    };
    let unpacked: Vec<_> = paras
        .iter()
        .filter(|p| p.get("Status") == Some("install ok unpacked"))
        .collect();
    // Package or virtual name -> the unpacked packages that are or provide it.
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let names = |field: Option<&'_ str>| -> Vec<String> {
        field
            .unwrap_or_default()
            .split([',', '|'])
            .filter_map(|d| d.split(['(', ' ', ':']).find(|s| !s.is_empty()))
            .map(str::to_string)
            .collect()
    };
    for (i, p) in unpacked.iter().enumerate() {
        let mut own = names(p.get("Provides"));
        own.extend(p.get("Package").map(str::to_string));
        for n in own {
            by_name.entry(n).or_default().push(i);
        }
    }
    let mut todo: Vec<usize> = (0..unpacked.len())
        .filter(|&i| unpacked[i].get("Essential") == Some("yes"))
        .collect();
    let mut set: BTreeSet<usize> = todo.iter().copied().collect();
    while let Some(i) = todo.pop() {
        let p = unpacked[i];
        let mut deps = names(p.get("Depends"));
        deps.extend(names(p.get("Pre-Depends")));
        for d in deps {
            for &j in by_name.get(&d).map(Vec::as_slice).unwrap_or_default() {
                if set.insert(j) {
                    todo.push(j);
                }
            }
        }
    }
    set.into_iter()
        .filter_map(|i| {
            let p = unpacked[i];
            let name = p.get("Package")?;
            Some(match (p.get("Multi-Arch"), p.get("Architecture")) {
                (Some("same"), Some(arch)) => format!("{name}:{arch}"),
                _ => name.to_string(),
            })
        })
        .collect()
}

const WHEELS: &str = "var/tmp/imgbuild-wheels";

/// `pip install` of the pinned files, offline: they are copied from the cache into the root,
/// installed with `--no-index --no-deps --require-hashes`, and removed. `--no-compile`:
/// byte-code files embed build times and would make the layer differ on every build.
pub fn pip(
    plan: &Plan,
    step: &Step,
    pins: &[LockedPip],
    cache: &Cache,
    live: &mut LiveRoot,
    layers: &[LayerRecord],
) -> Result<LayerRecord, RealizeError> {
    live.step(plan, step, cache, layers, 0..0, |root| {
        let bwrap = &sandbox::bwrap()?;
        let dir = root.join(WHEELS);
        let io = |source| {
            RealizeError::Sandbox(SandboxError::Io {
                action: "stage wheels in",
                path: dir.clone(),
                source,
            })
        };
        let confined = Root::open(root).map_err(io)?;
        confined.dir(WHEELS.as_bytes(), true).map_err(io)?;
        let mut req = String::new();
        for p in pins {
            let file = p.url.rsplit('/').next().unwrap_or(&p.name);
            let file = file.split(['#', '?']).next().unwrap_or(file);
            let mut blob = std::fs::File::open(cache.blob_path(&p.sha256)).map_err(io)?;
            let rel = format!("{WHEELS}/{file}");
            confined
                .write_file(rel.as_bytes(), Attrs::FILE, None, &mut blob)
                .map_err(io)?;
            req.push_str(&format!(
                "{}=={} --hash=sha256:{}\n",
                p.name,
                p.version,
                p.sha256.hex()
            ));
        }
        std::fs::write(dir.join("requirements.txt"), req).map_err(io)?;
        let script = format!(
            "set -e\npython3 -m pip install --no-index --no-deps --require-hashes --no-compile \
             --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
             --find-links /{WHEELS} -r /{WHEELS}/requirements.txt\nrm -rf /{WHEELS}"
        );
        sandbox::run(
            bwrap,
            root,
            "pip install",
            &script,
            &[("PIP_BREAK_SYSTEM_PACKAGES", "1")],
            false,
            plan.mtime,
        )?;
        Ok(())
    })
}

const BUILD_DEBS: &str = "var/cache/imgbuild-build-debs";

/// `[apt] build_packages`: the locked .debs copied from the cache into the root and installed
/// with the image's own dpkg, offline: all unpacked first (in lock order, so a Pre-Depends
/// inside the set is not enforced at unpack: the lock already holds the whole closure), then
/// configured in dependency order; services kept from starting; the .debs removed again.
pub fn build_packages(
    plan: &Plan,
    step: &Step,
    packages: &[LockedPackage],
    cache: &Cache,
    live: &mut LiveRoot,
    layers: &[LayerRecord],
) -> Result<LayerRecord, RealizeError> {
    live.step(plan, step, cache, layers, 0..0, |root| {
        let io = |source| {
            RealizeError::Sandbox(SandboxError::Io {
                action: "stage build packages in",
                path: root.join(BUILD_DEBS),
                source,
            })
        };
        let confined = Root::open(root).map_err(io)?;
        if !super::chrootless::has_shell(&confined) {
            return Err(RealizeError::Layer {
                step: step.name.clone(),
                source: std::io::Error::other(
                    "build packages are installed with the image's own shell and dpkg, and this image has no /bin/sh",
                ),
            });
        }
        confined.dir(BUILD_DEBS.as_bytes(), true).map_err(io)?;
        for (i, p) in packages.iter().enumerate() {
            let mut blob = std::fs::File::open(cache.blob_path(&p.sha256)).map_err(io)?;
            let rel = format!("{BUILD_DEBS}/{i:05}.deb");
            confined
                .write_file(rel.as_bytes(), Attrs::FILE, None, &mut blob)
                .map_err(io)?;
        }
        let bwrap = &sandbox::bwrap()?;
        let script = format!(
            "set -e\nprintf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d\n\
             chmod 755 /usr/sbin/policy-rc.d\n\
             dpkg --force-confdef --force-confold --force-depends --unpack /{BUILD_DEBS}/*.deb\n\
             dpkg --force-confdef --force-confold --configure -a\n\
             rm -rf /{BUILD_DEBS} /usr/sbin/policy-rc.d"
        );
        sandbox::run(
            bwrap,
            root,
            "dpkg -i (build packages)",
            &script,
            &[("DEBIAN_FRONTEND", "noninteractive")],
            false,
            plan.mtime,
        )?;
        Ok(())
    })
}

/// How a `[[run]]` command runs.
pub struct How<'a> {
    pub shell: &'a [String],
    pub user: Option<&'a str>,
    pub network: bool,
    /// The image's environment (base config with `[env]` applied), as a RUN gets it.
    pub env: &'a [(String, String)],
}

use crate::tool::sh_quote;

/// A `[[run]]` command, given to the recipe's shell (`/bin/sh -c` by default), as `user`
/// (with that user's home) if set. The command travels in an environment variable, so it is
/// never re-parsed by another shell.
pub fn command(
    plan: &Plan,
    step: &Step,
    command: &str,
    how: &How<'_>,
    cache: &Cache,
    live: &mut LiveRoot,
    layers: &[LayerRecord],
) -> Result<LayerRecord, RealizeError> {
    live.step(plan, step, cache, layers, 0..0, |root| {
        let bwrap = &sandbox::bwrap()?;
        let shell: Vec<String> = how.shell.iter().map(|w| sh_quote(w)).collect();
        let shell = shell.join(" ");
        let script = match how.user {
            None => format!("cd /root 2>/dev/null || cd /; exec {shell} \"$IMGBUILD_RUN\""),
            Some(u) => {
                let u = sh_quote(u);
                format!(
                    "home=$(getent passwd {u} | cut -d: -f6); cd \"${{home:-/}}\"; \
                     HOME=\"${{home:-/}}\" USER={u} exec setpriv --reuid={u} --regid=\"$(id -g {u})\" \
                     --init-groups {shell} \"$IMGBUILD_RUN\""
                )
            }
        };
        let mut env: Vec<(&str, &str)> = how
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("IMGBUILD_RUN", command));
        sandbox::run(
            bwrap,
            root,
            command.lines().next().unwrap_or(command),
            &script,
            &env,
            how.network,
            plan.mtime,
        )?;
        Ok(())
    })
}

/// Asks the image's own pip what `[pip] packages` resolve to (`pip install --dry-run
/// --report`, with the network): the pins for the lock file. It runs on the build's root
/// (brought to `layers`), which it must leave as it found it: when the run changed anything
/// but the report, the root is given up (the next step unpacks the layers again).
pub fn pip_report(
    cache: &Cache,
    live: &mut LiveRoot,
    layers: &[LayerRecord],
    packages: &[String],
    index_url: Option<&str>,
    mtime: u64,
) -> Result<String, RealizeError> {
    let bwrap = sandbox::bwrap()?;
    let root = live.advance(cache, layers, 0..0, mtime)?;
    let before = sandbox::snapshot(&root)?;
    let quoted: Vec<String> = packages.iter().map(|p| sh_quote(p)).collect();
    let index = index_url
        .map(|u| format!("--index-url {} ", sh_quote(u)))
        .unwrap_or_default();
    let script = format!(
        "exec python3 -m pip install --dry-run --ignore-installed --quiet --no-cache-dir \
         --disable-pip-version-check --root-user-action=ignore {index}--report /{PIP_REPORT} {}",
        quoted.join(" ")
    );
    let ran = sandbox::run(
        &bwrap,
        &root,
        "pip install --dry-run --report",
        &script,
        &[
            ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ],
        true,
        mtime,
    );
    let path = root.join(PIP_REPORT);
    let io = |source| {
        RealizeError::Sandbox(SandboxError::Io {
            action: "read pip's report",
            path: path.clone(),
            source,
        })
    };
    let read = ran.map_err(RealizeError::from).and_then(|_output| {
        let confined = Root::open(&root).map_err(io)?;
        let bytes = confined
            .read_followed(PIP_REPORT.as_bytes(), 64 << 20)
            .map_err(io)?;
        confined.remove(PIP_REPORT.as_bytes()).map_err(io)?;
        String::from_utf8(bytes)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    });
    let kept = sandbox::clean(&root, &before).is_ok()
        && sandbox::snapshot(&root).is_ok_and(|after| sandbox::same_contents(&before, &after));
    if !kept {
        live.reset();
    }
    read
}

/// Where pip writes its resolution report in the root (removed once read).
const PIP_REPORT: &str = ".imgbuild-pip-report.json";
