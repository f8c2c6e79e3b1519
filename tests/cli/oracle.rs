//! The import oracle (live: the Debian mirror comes from this machine's apt configuration).
//! Each fixture Dockerfile under `fixtures/dockerfiles/NAME/` (written for these tests, in the
//! styles real Dockerfiles use) is built by buildah (overlay storage, chroot isolation) and, after
//! `imgbuild import`, by imgbuild, both from the same bookworm minbase layout imgbuild made
//! (`FROM ${BASE}`, given as `oci:PATH:latest`; `MIRROR` is the Debian mirror, for fixtures
//! that download from it). buildah's image is mounted in its store, ours unpacked with umoci,
//! and the two are compared path by path: kind, mode, owner, content or link target, extended attributes.
//! Every difference must be on the commented allowlist below.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use super::fidelity::{Entry, tree};
use super::proxmox::mirror;
use super::{Work, assert_ok, repo, stderr, stdout};

/// Paths that may differ between buildah's and imgbuild's build of the same Dockerfile.
/// An entry ending in `/` is a prefix.
const ALLOWED: &[(&str, &str)] = &[
    (
        "etc/hostname",
        "buildah leaves its RUN mount points behind as empty files",
    ),
    (
        "etc/hosts",
        "buildah leaves its RUN mount points behind as empty files",
    ),
    (
        "etc/resolv.conf",
        "buildah leaves its RUN mount points behind as empty files",
    ),
    (
        "var/log/",
        "logs of apt and dpkg runs: imgbuild removes them (they differ on every build)",
    ),
    (
        "var/cache/debconf/",
        "debconf's caches and their -old backups, rewritten by every apt run",
    ),
    (
        "var/cache/ldconfig/aux-cache",
        "ld.so's cache of file stamps: imgbuild removes it",
    ),
    ("var/lib/dpkg/status-old", "backups imgbuild removes"),
    ("var/lib/dpkg/lock-frontend", "apt's lock files"),
    (
        "var/cache/apt/",
        "apt's package caches (pkgcache.bin) and lock",
    ),
    (
        "var/lib/apt/lists/",
        "apt's lists: the Dockerfile removes them, imgbuild never writes them",
    ),
    ("etc/shadow-", "backups imgbuild removes"),
    ("etc/passwd-", "backups imgbuild removes"),
    ("etc/group-", "backups imgbuild removes"),
    ("etc/gshadow-", "backups imgbuild removes"),
    ("etc/subuid-", "backups imgbuild removes"),
    ("etc/subgid-", "backups imgbuild removes"),
];

/// The minbase layout both builds start from, made once per run (removed with the returned
/// directory). In a lowercase directory: buildah names the container after the layout's
/// path, and a reference must be lowercase.
fn minbase(work: &Work) -> (tempfile::TempDir, PathBuf) {
    let keep = tempfile::Builder::new()
        .prefix("imgbuild-oracle-")
        .rand_bytes(0)
        .suffix(&std::process::id().to_string())
        .tempdir()
        .unwrap();
    let out = keep.path().join("minbase");
    let o = work
        .cmd()
        .args(["--quiet", "--var", &format!("mirror={}", mirror()), "build"])
        .arg(work.path("recipes/bookworm-minbase.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    (keep, out)
}

fn allowed(path: &str) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(p, _)| {
            if p.ends_with('/') {
                path.starts_with(p)
            } else {
                path == *p
            }
        })
        .map(|(_, why)| *why)
}

/// `/etc/shadow` with each entry's "last changed" day blanked: useradd writes the build day
/// (buildah's RUN has no SOURCE_DATE_EPOCH), imgbuild the day of the recipe's build time.
fn shadow_without_days(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join("etc/shadow"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.len() > 2 {
                f[2] = "";
            }
            f.join(":")
        })
        .collect()
}

fn stanzas(path: &Path) -> BTreeSet<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split("\n\n")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The image config of our layout's `latest`, read through skopeo.
fn config(layout: &Path) -> serde_json::Value {
    let o = Std::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert_ok(&o);
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn buildah(store: &Path) -> Std {
    let mut c = Std::new("buildah");
    c.arg("--storage-driver")
        .arg("overlay")
        .arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("run"));
    c
}

/// Removes a buildah container (unmounting its overlay) however the comparison ends: a
/// mount left behind would keep the test's directories from being removed.
struct Unmount(PathBuf, String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = buildah(&self.0).args(["rm", &self.1]).output();
    }
}

/// Builds `fixture` both ways; the differences not on the allowlist.
/// On success: the paths compared, and the time each builder took (buildah: build and mount;
/// imgbuild: import, check, build).
fn compare(work: &Work, minbase: &Path, fixture: &Path) -> Result<String, Vec<String>> {
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let ctx = work.path(&format!("ctx-{name}"));
    super::copy_dir(fixture, &ctx);
    let base = format!("oci:{}:latest", minbase.display());
    // One buildah store per fixture, removed with the fixture's other trees once compared.
    // Overlay storage: vfs copies the whole tree for every container and diffs it whole on
    // commit (three to five times slower here).
    let store = work.path(&format!("buildah-store-{name}"));

    let started = std::time::Instant::now();
    let o = buildah(&store)
        .args(["bud", "--isolation", "chroot", "--layers=false"])
        .args(["--build-arg", &format!("BASE={base}")])
        .args(["--build-arg", &format!("MIRROR={}", mirror())])
        .args(["-t", &format!("oracle-{name}")])
        .arg(&ctx)
        .output()
        .unwrap();
    assert_ok(&o);
    // buildah's image is read in its own store (a container of it, mounted), with its
    // config from `buildah inspect`: pushing it to a layout and unpacking that took three
    // times as long and checked nothing of buildah's.
    let o = buildah(&store)
        .args(["from", "--pull-never", "--name"])
        .arg(format!("oracle-{name}-ctr"))
        .arg(format!("oracle-{name}"))
        .output()
        .unwrap();
    assert_ok(&o);
    let _unmount = Unmount(store.clone(), format!("oracle-{name}-ctr"));
    let o = buildah(&store)
        .arg("mount")
        .arg(format!("oracle-{name}-ctr"))
        .output()
        .unwrap();
    assert_ok(&o);
    let a = PathBuf::from(stdout(&o).trim());
    let o = buildah(&store)
        .args(["inspect", "--type", "image"])
        .arg(format!("oracle-{name}"))
        .output()
        .unwrap();
    assert_ok(&o);
    let ca = serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["OCIv1"].clone();
    let theirs_secs = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();

    let recipe = ctx.join("imported.toml");
    let o = work
        .cmd()
        .current_dir(&ctx)
        .args(["import", "Dockerfile", "-o"])
        .arg(&recipe)
        .output()
        .unwrap();
    assert_ok(&o);
    let o = work
        .cmd()
        .args(["--var", &format!("BASE={base}")])
        .args(["--var", &format!("MIRROR={}", mirror()), "check"])
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: check refuses the import:\n{}",
        stderr(&o)
    );
    crate::assert_runs_parse(&fs::read_to_string(&recipe).unwrap(), &name);
    let ours = work.path(&format!("imgbuild-{name}"));
    let o = work
        .cmd()
        .args(["--var", &format!("BASE={base}")])
        .args(["--var", &format!("MIRROR={}", mirror()), "build"])
        .arg(&recipe)
        .arg("--out")
        .arg(&ours)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: imgbuild build fails:\n{}",
        stderr(&o)
    );

    let ours_secs = started.elapsed().as_secs_f64();
    // Ours is read by umoci (`raw unpack`: the root file system only, without the mtree
    // manifest `umoci unpack` spends most of its time on).
    let b = work.path(&format!("i-{name}"));
    let o = Std::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:latest", ours.display()))
        .arg(&b)
        .output()
        .unwrap();
    assert_ok(&o);
    let (ta, tb): (BTreeMap<String, Entry>, BTreeMap<String, Entry>) = (tree(&a), tree(&b));
    let mut unexpected = Vec::new();
    // The runtime configuration: everything but labels (buildah adds its version) and
    // history.
    let cb = config(&ours);
    for field in [
        "Env",
        "User",
        "WorkingDir",
        "Entrypoint",
        "Cmd",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
    ] {
        let (mut x, mut y) = (ca["config"][field].clone(), cb["config"][field].clone());
        // Env is a set of variables. Its order differs between builders: buildah moves a
        // variable set again to the end, Docker (and imgbuild) replace it in place.
        if field == "Env" {
            for v in [&mut x, &mut y] {
                if let Some(a) = v.as_array_mut() {
                    a.sort_by_key(|e| e.to_string());
                }
            }
        }
        if x != y {
            unexpected.push(format!(
                "{name}: config {field}\n  buildah:  {x}\n  imgbuild: {y}"
            ));
        }
    }
    for path in ta.keys().chain(tb.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (ta.get(path), tb.get(path));
        if x == y || allowed(path).is_some() {
            continue;
        }
        if path == "etc/shadow" && shadow_without_days(&a) == shadow_without_days(&b) {
            continue;
        }
        // apt keeps the file's entries in its own package order; it reads them as a set.
        if path == "var/lib/apt/extended_states" && stanzas(&a.join(path)) == stanzas(&b.join(path))
        {
            continue;
        }
        let mut detail = format!("{name}: {path}\n  buildah:  {x:?}\n  imgbuild: {y:?}");
        // Two files: what differs in them.
        if let (Some(x), Some(y)) = (x, y)
            && x.kind == 'f'
            && y.kind == 'f'
        {
            let d = Std::new("diff")
                .arg("-u")
                .arg(a.join(path))
                .arg(b.join(path))
                .output()
                .unwrap();
            let text = stdout(&d);
            let lines: Vec<&str> = text.lines().skip(2).take(20).collect();
            detail.push_str(&format!("\n  {}", lines.join("\n  ")));
        }
        unexpected.push(detail);
    }
    drop(_unmount);
    for dir in [ctx, store, ours, b] {
        let _ = fs::remove_dir_all(dir);
    }
    if unexpected.is_empty() {
        Ok(format!(
            "{} paths | {theirs_secs:.1} s | {ours_secs:.1} s",
            ta.len()
        ))
    } else {
        Err(unexpected)
    }
}

#[test]
fn imported_dockerfiles_build_what_buildah_builds() {
    let work = Work::setup();
    let mut fixtures: Vec<PathBuf> = fs::read_dir(repo().join("fixtures/dockerfiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        // `IMGBUILD_ORACLE=a,b` compares only those fixtures (while working on them).
        .filter(|p| match std::env::var("IMGBUILD_ORACLE") {
            Ok(only) => only
                .split(',')
                .any(|n| p.file_name().is_some_and(|f| f == n)),
            Err(_) => true,
        })
        .collect();
    fixtures.sort();
    let (_keep, minbase) = minbase(&work);
    // Two fixtures at a time: much of each build waits on the mirror or the disk.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(f) = fixtures.get(i) else { break };
                    let r = compare(&work, &minbase, f);
                    results.lock().unwrap().insert(i, r);
                }
            });
        }
    });
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (i, r) in results.into_inner().unwrap() {
        let name = fixtures[i]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match r {
            Ok(n) => rows.push(format!("| {name} | {n} | identical |")),
            Err(diffs) => {
                rows.push(format!("| {name} | | | | {} differences |", diffs.len()));
                failures.extend(diffs);
            }
        }
    }
    eprintln!(
        "\n| fixture | buildah's image | buildah | imgbuild | imgbuild's image |\n|---|---:|---:|---:|---|"
    );
    for r in &rows {
        eprintln!("{r}");
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}
