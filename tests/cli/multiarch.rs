//! Multi-platform builds: one recipe for linux/amd64 and linux/arm64 gives an OCI image index;
//! skopeo reads both platforms from the registry and `--override-arch arm64` picks the arm64
//! image, whose package script ran under emulation (qemu-user through binfmt_misc, as
//! `.ci/run` sets up). The fixture repository gains arm64 packages: their programs (dash,
//! dpkg, busybox and their libraries) come from the arm64 .debs of the machine's own Debian
//! mirror (apt's configuration), fetched once per target directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;
use std::sync::OnceLock;

use serde_json::Value;

use super::apt_repo::{Repo, dpkg_list, fixture_repo, pkg_for, recipe};
use super::servers::{Mode, Registry, p};
use super::{FileServer, Work, assert_ok, stdout, tool};

/// The arm64 .debs the fixture's arm64 base is made of.
const ARM64_DEBS: &[&str] = &[
    "dash",
    "dpkg",
    "busybox-static",
    "libc6",
    "libc-bin",
    "libmd0",
    "libselinux1",
    "libpcre2-8-0",
    "zlib1g",
    "liblzma5",
    "libbz2-1.0",
    "libzstd1",
];

/// busybox applets the maintainer scripts and dpkg call (dash has echo, test, printf).
const APPLETS: &[&str] = &[
    "rm", "cat", "mkdir", "chmod", "ls", "sed", "cmp", "mv", "ln", "readlink", "dirname",
    "basename", "mkfifo", "uname", "diff", "tar", "touch", "cp", "id", "grep",
];

/// `apt-get download` of [`ARM64_DEBS`] for arm64 from the machine's apt sources, with apt's
/// state in a private directory (the host's apt is not touched); done once.
fn arm64_debs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arm64-debs");
        let wanted = ARM64_DEBS.join(" ");
        if fs::read_to_string(dir.join("done")).is_ok_and(|d| d == wanted) {
            return dir;
        }
        let state = dir.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(state.join(d)).unwrap();
        }
        fs::write(state.join("status"), "").unwrap();
        let apt = |args: &[&str]| {
            let o = Std::new("apt-get")
                .current_dir(&dir)
                .args([
                    "-q",
                    "-o",
                    "APT::Architecture=arm64",
                    "-o",
                    "APT::Architectures=arm64",
                ])
                .arg("-o")
                .arg(format!(
                    "Dir::State::Lists={}",
                    state.join("lists").display()
                ))
                .arg("-o")
                .arg(format!("Dir::Cache={}", state.join("cache").display()))
                .arg("-o")
                .arg(format!(
                    "Dir::State::status={}",
                    state.join("status").display()
                ))
                .args(["-o", "APT::Sandbox::User=root"])
                .args(args)
                .output()
                .unwrap();
            assert_ok(&o);
        };
        apt(&["update"]);
        let mut args = vec!["download"];
        args.extend_from_slice(ARM64_DEBS);
        apt(&args);
        fs::write(dir.join("done"), &wanted).unwrap();
        dir
    })
}

/// Adds arm64 builds of the fixture packages `fixture-hello` needs: a base with dash, dpkg,
/// busybox and their libraries (as the .debs lay them out), and a `fixture-hello` whose
/// postinst records the machine it ran on.
fn add_arm64(repo: &mut Repo) {
    let tree = tempfile::tempdir().unwrap();
    for e in fs::read_dir(arm64_debs()).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            tool(
                "dpkg-deb",
                &[
                    "-x",
                    e.path().to_str().unwrap(),
                    tree.path().to_str().unwrap(),
                ],
            );
        }
    }
    let mut base = pkg_for(
        "arm64",
        "fixture-base",
        "1.0",
        "Essential: yes\nPriority: required\n",
    );
    for entry in walkdir::WalkDir::new(tree.path()).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(tree.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if rel.is_empty()
            || [
                "usr/share/doc",
                "usr/share/man",
                "usr/share/locale",
                "usr/share/lintian",
                "var/",
                "etc/",
            ]
            .iter()
            .any(|p| rel.starts_with(p))
        {
            continue;
        }
        let ft = entry.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap();
            base.links.push((rel, target.to_str().unwrap().to_string()));
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = entry.metadata().unwrap().permissions().mode() & 0o7777;
            base.files
                .push((rel, fs::read(entry.path()).unwrap(), mode));
        }
    }
    let mut extra = vec![("bin/sh".to_string(), "dash".to_string())];
    extra.extend(
        APPLETS
            .iter()
            .map(|a| (format!("usr/bin/{a}"), "/bin/busybox".to_string())),
    );
    for (path, target) in extra {
        let taken =
            base.files.iter().any(|f| f.0 == path) || base.links.iter().any(|l| l.0 == path);
        if !taken {
            base.links.push((path, target));
        }
    }
    repo.add(base);
    repo.add(pkg_for(
        "arm64",
        "fixture-lib",
        "1.2~rc1",
        "Multi-Arch: same\n",
    ));
    repo.add(pkg_for(
        "arm64",
        "fixture-provider",
        "3",
        "Provides: fixture-virtual (= 3)\n",
    ));
    let mut hello = pkg_for(
        "arm64",
        "fixture-hello",
        "2:1.0-1",
        "Depends: fixture-missing | fixture-lib (>= 1.1), fixture-virtual (>= 2), fixture-base\n",
    );
    hello.scripts.push((
        "postinst",
        "#!/bin/sh\nset -e\nmkdir -p /var/lib/fixture\necho \"$1\" > /var/lib/fixture/configured\nuname -m > /var/lib/fixture/machine\n"
            .into(),
    ));
    repo.add(hello);
}

fn skopeo(args: &[&str]) -> String {
    tool("skopeo", args)
}

#[test]
fn an_amd64_and_arm64_recipe_builds_an_index_and_arm64_scripts_run_emulated() {
    let mut repo = fixture_repo();
    add_arm64(&mut repo);
    repo.publish(None);
    // A download whose URL names the platform: each image gets its own, pinned in its section.
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        fs::write(
            repo.path(&format!("payload-{arch}-{uname}.txt")),
            format!("{arch}\n"),
        )
        .unwrap();
    }
    let server = FileServer::start(repo.root.path());
    let w = Work::setup();
    repo.signer.export(&w.path("recipes/fixture.asc"), true);
    let r = recipe(&w, &server, "fixture.asc");
    let text = fs::read_to_string(&r).unwrap().replace(
        "base = \"scratch\"",
        "base = \"scratch\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]",
    ) + &format!(
        "\n[[download]]\nurl = \"{}/payload-${{arch}}-${{uname_m}}.txt\"\ndest = \"/etc/payload\"\n",
        server.url
    );
    fs::write(&r, text).unwrap();

    assert_ok(&w.cmd().arg("check").arg(&r).output().unwrap());
    let meta = w.build_metadata(w.cmd(), &r, "out/multi");
    assert_eq!(
        meta["media_type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms = meta["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 2);
    assert_eq!(platforms[1]["platform"], "linux/arm64");
    let arm_manifest = platforms[1]["manifest"].as_str().unwrap().to_string();
    let arm_packages: Vec<&str> = platforms[1]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["arch"].as_str().unwrap())
        .collect();
    assert!(
        arm_packages.iter().all(|a| *a == "arm64"),
        "{arm_packages:?}"
    );

    // One lock file, a section per platform.
    let lock = fs::read_to_string(w.path("recipes/fixture-apt.lock")).unwrap();
    assert!(lock.contains("[platform.\"linux/amd64\"]"), "{lock}");
    assert!(lock.contains("[platform.\"linux/arm64\"]"), "{lock}");
    for url in ["payload-amd64-x86_64.txt", "payload-arm64-aarch64.txt"] {
        assert!(lock.contains(url), "{url} pinned: {lock}");
    }
    assert!(
        lock.contains("fixture-hello_2:1.0-1_arm64.deb")
            || lock.contains("fixture-hello_2%3a1.0-1_arm64.deb"),
        "{lock}"
    );
    for f in ["sbom.linux-amd64.spdx.json", "sbom.linux-arm64.spdx.json"] {
        assert!(w.path("out/multi").join(f).exists(), "{f}");
    }

    // Built again: the same index, every step from the cache.
    let again = w.build_metadata(w.cmd(), &r, "out/multi");
    assert_eq!(again["manifest"], meta["manifest"]);
    assert_eq!(again["cache"]["misses"], 0);

    // Pushed (and signed): skopeo sees an index with both platforms.
    let reg = Registry::start(Mode::Plain);
    let dest = format!("{}/multi:1", reg.host);
    let keys = w.path("keys");
    let o = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", "pw")
        .args(["key", "generate", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert_ok(&o);
    let o = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", "pw")
        .args(["push", p(w.dir.path(), "out/multi"), &dest, "--sign-key"])
        .arg(keys.join("imgbuild.key"))
        .output()
        .unwrap();
    assert_ok(&o);
    // The index and each platform's manifest carry a signature.
    for digest in [
        meta["manifest"].as_str().unwrap(),
        platforms[0]["manifest"].as_str().unwrap(),
        platforms[1]["manifest"].as_str().unwrap(),
    ] {
        let tag = format!("sha256-{}.sig", digest.strip_prefix("sha256:").unwrap());
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/multi:{tag}", reg.host),
        ]);
    }
    assert_eq!(stdout(&o).trim(), meta["manifest"].as_str().unwrap());
    let raw: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]))
    .unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let archs: Vec<(&str, &str)> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap(),
                m["platform"]["os"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(archs, [("amd64", "linux"), ("arm64", "linux")]);
    // Each platform's SBOM is a referrer of its manifest.
    let arm_hex = arm_manifest.strip_prefix("sha256:").unwrap();
    let referrers: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/multi:sha256-{arm_hex}", reg.host),
    ]))
    .unwrap();
    assert_eq!(
        referrers["manifests"][0]["artifactType"],
        "application/spdx+json"
    );

    // --override-arch arm64 picks the arm64 image; its postinst ran on an (emulated) aarch64.
    // Copied by Debian 13's skopeo under a policy requiring the key's sigstore signatures
    // (it checks the index's and the arm64 manifest's).
    let copy = w.path("arm");
    let public = keys.join("imgbuild.pub").display().to_string();
    let policy = crate::sign::trust(&w, "trust", &reg.host, "multi", &public);
    let o = crate::sign::skopeo_copy(
        &policy,
        &["--override-arch", "arm64", "--remove-signatures"],
        &format!("docker://{dest}"),
        &format!("oci:{}:1", copy.display()),
    );
    assert_ok(&o);
    // With another key in the policy, the same copy is rejected.
    let other = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", "pw")
        .args(["key", "generate", "--out"])
        .arg(w.path("other"))
        .output()
        .unwrap();
    assert_ok(&other);
    let other_public = w.path("other/imgbuild.pub").display().to_string();
    let policy = crate::sign::trust(&w, "trust-other", &reg.host, "multi", &other_public);
    let refused = crate::sign::skopeo_copy(
        &policy,
        &["--override-arch", "arm64", "--remove-signatures"],
        &format!("docker://{dest}"),
        &format!("oci:{}:1", w.path("refused").display()),
    );
    assert!(!refused.status.success(), "accepted with another key");
    let index: Value = serde_json::from_slice(&fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], arm_manifest.as_str());
    let bundle = w.path("arm-bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1", copy.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let root = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(root.join("var/lib/fixture/machine"))
            .unwrap()
            .trim(),
        "aarch64"
    );
    assert_eq!(
        fs::read_to_string(root.join("var/lib/fixture/configured"))
            .unwrap()
            .trim(),
        "configure"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/payload")).unwrap(),
        "arm64\n"
    );
    let list = dpkg_list(&root);
    assert!(list.contains("ii  fixture-hello 2:1.0-1"), "{list}");
    let config: Value = serde_json::from_slice(
        &fs::read(
            copy.join("blobs/sha256").join(
                serde_json::from_slice::<Value>(
                    &fs::read(copy.join("blobs/sha256").join(arm_hex)).unwrap(),
                )
                .unwrap()["config"]["digest"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("sha256:")
                    .unwrap(),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");

    // plan shows each platform's steps; rebuild pushes the index, then finds it unchanged.
    let plan = w.cmd().arg("plan").arg(&r).output().unwrap();
    assert_ok(&plan);
    let plan = stdout(&plan);
    assert!(
        plan.contains("platform  linux/amd64") && plan.contains("platform  linux/arm64"),
        "{plan}"
    );
    let nightly = format!("{}/nightly:1", reg.host);
    for expected in ["pushed", "unchanged"] {
        let report = w.path("report.json");
        let o = w
            .cmd()
            .arg("rebuild")
            .arg(&r)
            .args(["--push", &nightly, "--out", p(w.dir.path(), "out/multi")])
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        assert_ok(&o);
        let rep: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        assert_eq!(rep["status"], expected, "{rep}");
        assert_eq!(rep["digest"], meta["manifest"]);
        assert_eq!(rep["platforms"][1]["manifest"], arm_manifest.as_str());
    }

    // The amd64 image is the one a plain amd64 pull gets.
    let amd = w.path("amd");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        &format!("docker://{dest}"),
        &format!("oci:{}:1", amd.display()),
    ]);
    let index: Value = serde_json::from_slice(&fs::read(amd.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], platforms[0]["manifest"]);
}

#[test]
fn the_proxmox_target_is_amd64_and_check_says_so() {
    let w = Work::setup();
    let recipe = w.path("recipes/px.toml");
    let write = |platforms: &str| {
        fs::write(
            &recipe,
            format!("[image]\nname = \"px\"\nplatforms = {platforms}\n\n[target.proxmox]\n"),
        )
        .unwrap();
        w.cmd().arg("check").arg(&recipe).output().unwrap()
    };
    let both = write(r#"["linux/amd64", "linux/arm64"]"#);
    assert_ok(&both);
    assert!(
        super::stderr(&both).contains("the proxmox target builds linux/amd64 only"),
        "{}",
        super::stderr(&both)
    );
    let arm_only = write(r#"["linux/arm64"]"#);
    assert_eq!(arm_only.status.code(), Some(2));
    assert!(
        super::stderr(&arm_only).contains("px.toml:3:13")
            && super::stderr(&arm_only).contains("add linux/amd64"),
        "{}",
        super::stderr(&arm_only)
    );
}
