//! Building without root: CI runs as root, so the test makes users (one with subordinate id
//! ranges, one without) and runs imgbuild as them with `runuser`. The apt fixture image, with
//! a package script that sets a file capability, a user and a run that chowns, built as the
//! user in a user namespace, has the digest of the same build as root.

use std::path::Path;
use std::process::Command as Std;

use serde_json::Value;

use crate::apt_repo::fixture;
use crate::{Work, assert_ok, stderr, tool};

/// Makes `name` (once), with a subordinate range from `start` or, with `None`, without any.
fn user(name: &str, start: Option<u32>) -> u32 {
    let exists = Std::new("id").args(["-u", name]).output().unwrap();
    if !exists.status.success() {
        tool(
            "useradd",
            &[
                "--no-create-home",
                "--shell",
                "/bin/sh",
                "-K",
                "SUB_UID_COUNT=0",
                "-K",
                "SUB_GID_COUNT=0",
                name,
            ],
        );
    }
    if let Some(start) = start {
        let range = format!("{start}-{}", start + 65535);
        let listed = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        if !listed.lines().any(|l| l.starts_with(&format!("{name}:"))) {
            tool(
                "usermod",
                &["--add-subuids", &range, "--add-subgids", &range, name],
            );
        }
    }
    tool("id", &["-u", name]).trim().parse().unwrap()
}

/// `imgbuild ARGS` as `name`, with the workspace's cache, fixture URL and plain progress.
fn as_user(w: &Work, name: &str, cache: &Path, args: &[&str]) -> std::process::Output {
    let c = w.spawnable(cache);
    let mut cmd = Std::new("runuser");
    cmd.args(["-u", name, "--", "env"]);
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            cmd.arg(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    cmd.arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    // A copy the user can reach: the build tree may sit below a directory only root enters
    // (a clean clone in a `mktemp -d`).
    let exe = w.path("bin/imgbuild");
    if !exe.exists() {
        std::fs::create_dir_all(w.path("bin")).unwrap();
        std::fs::copy(c.get_program(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(
            w.path("bin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    cmd.arg(&exe);
    cmd.args(c.get_args());
    cmd.args(args);
    cmd.current_dir(w.dir.path());
    cmd.output().unwrap()
}

#[test]
fn a_normal_user_builds_the_root_builds_image_in_a_user_namespace() {
    let f = fixture(r#"["fixture-hello", "fixture-ping"]"#);
    let (w, r) = (&f.work, &f.recipe);
    let mut text = std::fs::read_to_string(r).unwrap();
    text.push_str(
        "\n[[user]]\nname = \"worker\"\nuid = 1234\n\n[[run]]\ncommand = \"mkdir -p /srv/data && chown worker:worker /srv/data && getcap /usr/bin/fixture-ping > /etc/caps-seen\"\n",
    );
    std::fs::write(r, text).unwrap();
    let root = w.build_metadata(w.cmd_with_cache(&w.path("cache-root")), r, "out/root");

    let uid = user("imgbuild-rootless", Some(700_000));
    // The workspace is the user's (a temp dir is its creator's alone).
    tool(
        "chown",
        &["-R", "imgbuild-rootless:", w.dir.path().to_str().unwrap()],
    );
    let meta = w.path("user.json");
    let o = as_user(
        w,
        "imgbuild-rootless",
        &w.path("cache-user"),
        &[
            "build",
            r.to_str().unwrap(),
            "--out",
            w.path("out/user").to_str().unwrap(),
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    assert!(
        stderr(&o).contains("building as root of a user namespace"),
        "{}",
        stderr(&o)
    );
    let user_meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(user_meta["manifest"], root["manifest"], "the same image");
    assert_eq!(
        user_meta["cache"]["hits"], 0,
        "built, not taken from root's cache"
    );
    // What it wrote outside is the user's.
    for p in ["out/user/index.json", "cache-user", "user.json"] {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(w.path(p)).unwrap());
        assert_eq!(owner, uid, "{p}");
    }
}

#[test]
fn a_user_without_subordinate_ids_is_told_what_to_add() {
    let w = Work::setup();
    user("imgbuild-noranges", None);
    tool(
        "chown",
        &["-R", "imgbuild-noranges:", w.dir.path().to_str().unwrap()],
    );
    let recipe = w.path("recipes/runs.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"runs\"\nbase = \"scratch\"\n\n[[run]]\ncommand = \"true\"\n",
    )
    .unwrap();
    let o = as_user(
        &w,
        "imgbuild-noranges",
        &w.path("cache"),
        &["build", recipe.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "no subordinate uid range of at least 65536 for `imgbuild-noranges` in /etc/subuid"
        ) && stderr(&o).contains("usermod --add-subuids"),
        "{}",
        stderr(&o)
    );
    // A recipe that runs nothing of the image's needs no namespace.
    let o = as_user(
        &w,
        "imgbuild-noranges",
        &w.path("cache"),
        &[
            "build",
            w.recipe().to_str().unwrap(),
            "--out",
            w.path("out/hello").to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    assert!(!stderr(&o).contains("user namespace"), "{}", stderr(&o));
}
