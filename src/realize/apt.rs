//! Apt steps: .deb files streamed into package layers with their dpkg `info/` files, and the
//! dpkg database layer (`status`, trigger interests) that makes them "unpacked" packages.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

use super::RealizeError;
use crate::apt::deb::{self, ControlInfo, DebError, Unpacker};
use crate::apt::dpkg;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::layer::{LayerWriter, Meta};
use crate::lock::LockedPackage;
use crate::lower::LowerFs;

fn label(p: &LockedPackage) -> String {
    format!("{}_{}_{}.deb", p.name, p.version, p.arch)
}

/// dpkg's name for a package's info files: `NAME` or, for `Multi-Arch: same`, `NAME:ARCH`.
fn info_name(p: &LockedPackage, control: &ControlInfo) -> String {
    let same = crate::apt::control::parse(&control.control)
        .ok()
        .and_then(|ps| {
            ps.first()
                .and_then(|p| p.get("Multi-Arch").map(|m| m == "same"))
        })
        .unwrap_or(false);
    if same {
        format!("{}:{}", p.name, p.arch)
    } else {
        p.name.clone()
    }
}

/// The .debs being fetched while the package layers are built: a layer waits for each of its
/// packages in turn, so downloading, xz decoding and compression overlap.
#[derive(Default)]
pub struct Arrivals {
    state: Mutex<(HashSet<Digest>, bool)>,
    changed: Condvar,
}

impl Arrivals {
    /// `d` is in the cache, verified.
    pub fn arrived(&self, d: &Digest) {
        if let Ok(mut s) = self.state.lock() {
            s.0.insert(d.clone());
        }
        self.changed.notify_all();
    }

    /// The fetching stopped on an error: nothing more will arrive.
    pub fn failed(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.1 = true;
        }
        self.changed.notify_all();
    }

    /// Waits until `d` arrived; fails when the fetching failed first.
    fn wait(&self, d: &Digest, name: &str) -> Result<(), RealizeError> {
        let stopped = || RealizeError::Layer {
            step: name.to_string(),
            source: std::io::Error::other("not downloaded: fetching the packages failed"),
        };
        let mut s = self.state.lock().map_err(|_| stopped())?;
        while !s.0.contains(d) {
            if s.1 {
                return Err(stopped());
            }
            s = self.changed.wait(s).map_err(|_| stopped())?;
        }
        Ok(())
    }
}

fn deb_err(e: DebError) -> RealizeError {
    RealizeError::Deb(e)
}

const INFO_DIR: &[u8] = b"var/lib/dpkg/info";

/// One layer of packages: their files, then their `info/` files.
pub fn packages(
    w: &mut LayerWriter,
    lower: &LowerFs,
    cache: &Cache,
    packages: &[LockedPackage],
    arrivals: &Arrivals,
) -> Result<(), RealizeError> {
    let mut dirs = HashSet::new();
    let mut u = Unpacker {
        w,
        lower,
        dirs: &mut dirs,
    };
    for p in packages {
        let path = cache.blob_path(&p.sha256);
        let name = label(p);
        // Arrived means checked: a cached file by its stamp (or hashed), a fetched one as it
        // was written.
        arrivals.wait(&p.sha256, &name)?;
        let control = deb::control(&path, &name).map_err(deb_err)?;
        let (list, md5sums) = u
            .data(&path, &name, &control.conffiles())
            .map_err(deb_err)?;
        let io = |source| RealizeError::Layer {
            step: name.clone(),
            source,
        };
        u.ensure_dir(INFO_DIR, Meta::DIR).map_err(io)?;
        let iname = info_name(p, &control);
        let mut list_text = list.join("\n");
        list_text.push('\n');
        let mut files: Vec<(String, Vec<u8>, u32)> =
            vec![("list".into(), list_text.into_bytes(), 0o644)];
        files.extend(control.info.iter().cloned());
        if !files.iter().any(|f| f.0 == "md5sums") && !md5sums.is_empty() {
            files.push(("md5sums".into(), md5sums.into_bytes(), 0o644));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (f, data, mode) in files {
            let mut dest = INFO_DIR.to_vec();
            dest.extend_from_slice(format!("/{iname}.{f}").as_bytes());
            u.w.file(
                &dest,
                Meta { mode, ..Meta::FILE },
                data.len() as u64,
                data.as_slice(),
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// dpkg's database for the packages: `status` (base entries plus these, unpacked), the
/// trigger interest files, `info/format`, apt's `extended_states` (see [`extended_states`]), and `arch` (the `native` architecture, then the foreign ones the
/// packages use, as `dpkg --add-architecture` keeps it) when the base has none.
pub fn database(
    w: &mut LayerWriter,
    lower: &LowerFs,
    cache: &Cache,
    packages: &[LockedPackage],
    native: &str,
) -> Result<(), RealizeError> {
    let mut controls = Vec::new();
    for p in packages {
        controls.push((
            p,
            deb::control(&cache.blob_path(&p.sha256), &label(p)).map_err(deb_err)?,
        ));
    }
    let unpacked: Vec<dpkg::Unpacked> = controls
        .iter()
        .map(|(_, c)| dpkg::Unpacked {
            control: &c.control,
            conffiles: c.conffiles(),
        })
        .collect();
    let base = lower
        .read(b"var/lib/dpkg/status")
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let status = dpkg::status(base.as_deref(), &unpacked).map_err(RealizeError::Dpkg)?;
    let triggers: Vec<(String, String)> = controls
        .iter()
        .filter_map(|(p, c)| {
            c.info
                .iter()
                .find(|(n, _, _)| n == "triggers")
                .map(|(_, t, _)| (info_name(p, c), String::from_utf8_lossy(t).into_owned()))
        })
        .collect();
    let read = |name: &str| -> Option<String> {
        lower
            .read(format!("var/lib/dpkg/triggers/{name}").as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let base_file = read("File");
    let registry = dpkg::trigger_registry(base_file.as_deref(), &read, &triggers);
    let io = |source| RealizeError::Layer {
        step: "dpkg database".into(),
        source,
    };
    let mut dirs = HashSet::new();
    let mut u = Unpacker {
        w,
        lower,
        dirs: &mut dirs,
    };
    for d in ["alternatives", "info", "parts", "triggers", "updates"] {
        u.ensure_dir(format!("var/lib/dpkg/{d}").as_bytes(), Meta::DIR)
            .map_err(io)?;
    }
    u.ensure_dir(b"var/log", Meta::DIR).map_err(io)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("var/lib/dpkg/status".into(), status.into_bytes()),
        ("var/lib/dpkg/lock".into(), Vec::new()),
        ("var/lib/dpkg/triggers/Unincorp".into(), Vec::new()),
    ];
    for (name, body) in registry {
        files.push((format!("var/lib/dpkg/triggers/{name}"), body.into_bytes()));
    }
    if lower.get(b"var/lib/dpkg/arch").is_none() {
        files.push(("var/lib/dpkg/arch".into(), arch_file(native, packages)));
    }
    // The database layout version: 1 names the info files of `Multi-Arch: same` packages
    // `NAME:ARCH.*`, as they are written here (without it dpkg assumes the old layout).
    if lower.get(b"var/lib/dpkg/info/format").is_none() {
        files.push(("var/lib/dpkg/info/format".into(), b"1\n".to_vec()));
    }
    let base_states = lower
        .read(EXTENDED_STATES)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    if let Some(states) = extended_states(base_states.as_deref(), base.as_deref(), packages, native)
    {
        u.ensure_dir(b"var/lib/apt", Meta::DIR).map_err(io)?;
        files.push((
            String::from_utf8_lossy(EXTENDED_STATES).into_owned(),
            states,
        ));
    }
    files.sort();
    for (path, body) in files {
        // dpkg makes its lock file 0640.
        let mode = if path == "var/lib/dpkg/lock" {
            0o640
        } else {
            0o644
        };
        u.w.file(
            path.as_bytes(),
            Meta { mode, ..Meta::FILE },
            body.len() as u64,
            body.as_slice(),
        )
        .map_err(io)?;
    }
    Ok(())
}

const EXTENDED_STATES: &[u8] = b"var/lib/apt/extended_states";

/// apt's `extended_states`: `Auto-Installed: 1` for every package installed only as a
/// dependency, as `apt-get install` records it (so `apt-mark showauto` and `apt autoremove`
/// are right). The base image's marks are kept in their order and new ones follow by name;
/// a package the base had installed keeps its mark when it is only upgraded; one asked for
/// by name becomes manual. `None` when there is nothing to write.
fn extended_states(
    base: Option<&str>,
    base_status: Option<&str>,
    packages: &[LockedPackage],
    native: &str,
) -> Option<Vec<u8>> {
    use std::collections::BTreeSet;
    let arch_of = |a: &str| if a == "all" { native } else { a }.to_string();
    // The base's entries in their order (apt rewrites the file keeping it), then the new
    // ones by name.
    let mut auto: Vec<(String, String)> = Vec::new();
    for p in base
        .and_then(|b| crate::apt::control::parse(b).ok())
        .unwrap_or_default()
    {
        if let (Some(name), Some("1")) = (p.get("Package"), p.get("Auto-Installed")) {
            let arch = p.get("Architecture").unwrap_or(native);
            auto.push((name.to_string(), arch_of(arch)));
        }
    }
    let in_base: BTreeSet<String> = base_status
        .and_then(|s| crate::apt::universe::installed(s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let mut new: Vec<&LockedPackage> = packages.iter().collect();
    new.sort_by(|a, b| a.name.cmp(&b.name));
    for p in new {
        let key = (p.name.clone(), arch_of(&p.arch));
        if p.auto {
            if !in_base.contains(&p.name) && !auto.contains(&key) {
                auto.push(key);
            }
        } else {
            auto.retain(|k| *k != key);
        }
    }
    if auto.is_empty() && base.is_none() {
        return None;
    }
    let mut out = String::new();
    for (name, arch) in &auto {
        out.push_str(&format!(
            "Package: {name}\nArchitecture: {arch}\nAuto-Installed: 1\n\n"
        ));
    }
    Some(out.into_bytes())
}

/// dpkg's `arch` file: the native architecture first, then each foreign one in use, sorted.
fn arch_file(native: &str, packages: &[LockedPackage]) -> Vec<u8> {
    let foreign: std::collections::BTreeSet<&str> = packages
        .iter()
        .map(|p| p.arch.as_str())
        .filter(|a| *a != native && *a != "all")
        .collect();
    let mut out = format!("{native}\n");
    for a in foreign {
        out.push_str(a);
        out.push('\n');
    }
    out.into_bytes()
}
