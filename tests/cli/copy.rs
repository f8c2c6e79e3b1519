//! `[[copy]]`: a project directory copied into the image, read back from the layer with GNU
//! tar; its key from content (a changed file changes that step's key and no other copy's),
//! the stat cache against same-size, same-mtime rewrites, and the errors.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::{Work, assert_ok, stderr, stdout, tool};

fn write(root: &Path, rel: &str, bytes: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// The example recipe with two `[[copy]]` entries: `app` (excludes, preserve_mode, owned by
/// the recipe's user) and `conf` (modes given).
fn setup() -> Work {
    let w = Work::setup();
    let app = w.path("recipes/app");
    write(&app, "main.py", "print('hi')\n");
    write(
        &app,
        "bin/run",
        "#!/bin/sh\nexec python3 /srv/app/main.py\n",
    );
    fs::set_permissions(app.join("bin/run"), fs::Permissions::from_mode(0o750)).unwrap();
    write(&app, "debug.log", "noise\n");
    write(&app, "lib/debug.log", "noise\n");
    write(&app, "lib/keep.log", "kept\n");
    write(&app, "cache/blob", "cached\n");
    write(&app, "secret.txt", "not for the image\n");
    write(&app, ".imgbuildignore", "# from the project\nsecret.txt\n");
    std::os::unix::fs::symlink("bin/run", app.join("start")).unwrap();
    write(&w.path("recipes/conf"), "app.ini", "[app]\nport = 8080\n");
    let text = fs::read_to_string(w.recipe()).unwrap();
    fs::write(
        w.recipe(),
        format!(
            "{text}\n[[copy]]\nsrc = \"app\"\ndest = \"/srv/app\"\nexclude = [\"*.log\", \"!keep.log\", \"cache/\"]\nowner = \"${{var.user}}:docker\"\npreserve_mode = true\n\n[[copy]]\nsrc = \"conf\"\ndest = \"/etc/app\"\nmode = 0o640\ndir_mode = 0o750\n"
        ),
    )
    .unwrap();
    w
}

/// `(mode string, owner, size, path)` of each entry of the copy step's layer with `dest`.
fn layer_entries(w: &Work, meta: &Value, dest: &str) -> Vec<String> {
    let layer = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["step"]
                .as_str()
                .unwrap()
                .contains(&format!("-> {dest} ("))
        })
        .unwrap_or_else(|| panic!("no copy step to {dest}: {meta}"));
    let blob = w.path("out/hello/blobs/sha256").join(
        layer["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap(),
    );
    tool("tar", &["--numeric-owner", "-tvzf", blob.to_str().unwrap()])
        .lines()
        .map(|l| {
            // drwxr-x--- 1000/999 0 2026-... srv/app/bin -> keep mode, owner, name (and target)
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5..].join(" "))
        })
        .collect()
}

/// Each step's line of `imgbuild plan`, by the step's name.
fn plan(w: &Work) -> Vec<String> {
    let o = w
        .cmd()
        .args(["plan", "--explain"])
        .arg(w.recipe())
        .output()
        .unwrap();
    assert_ok(&o);
    stdout(&o).lines().map(str::to_string).collect()
}

fn key_of(lines: &[String], name: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(name) && !l.trim_start().starts_with("why"))
        .unwrap_or_else(|| panic!("no {name} in {lines:#?}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn a_copied_directory_keeps_what_is_not_excluded_with_its_modes_and_owner() {
    let w = setup();
    let meta = w.build_metadata(w.cmd(), &w.recipe(), "out/hello");
    let app = layer_entries(&w, &meta, "/srv/app");
    assert_eq!(
        app,
        [
            // The missing parent too, owned like the entry (as `COPY --chown` makes it).
            "drwxr-xr-x 1000/999 srv/",
            "drwxr-xr-x 1000/999 srv/app/",
            "-rw-r--r-- 1000/999 srv/app/.imgbuildignore",
            "drwxr-xr-x 1000/999 srv/app/bin/",
            // preserve_mode: the source's executable bit, x wherever the mode has r.
            "-rwxr-xr-x 1000/999 srv/app/bin/run",
            "drwxr-xr-x 1000/999 srv/app/lib/",
            "-rw-r--r-- 1000/999 srv/app/lib/keep.log",
            "-rw-r--r-- 1000/999 srv/app/main.py",
            "lrwxrwxrwx 1000/999 srv/app/start -> bin/run",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    );
    let conf = layer_entries(&w, &meta, "/etc/app");
    assert_eq!(
        conf,
        [
            // The image's own /etc, as it is below.
            "drwxr-xr-x 0/0 etc/",
            "drwxr-x--- 0/0 etc/app/",
            "-rw-r----- 0/0 etc/app/app.ini"
        ]
    );
    // Built again: every step from the cache.
    let again = w.build_metadata(w.cmd(), &w.recipe(), "out/hello");
    assert_eq!(again["cache"]["misses"], 0);
    assert_eq!(again["manifest"], meta["manifest"]);
}

#[test]
fn a_changed_file_changes_its_copy_step_and_the_stat_cache_sees_rewrites() {
    let w = setup();
    // (Older than the stat cache's racy window, so only the stamps can tell a rewrite.)
    std::thread::sleep(std::time::Duration::from_millis(2100));
    w.build("out/hello");
    let before = plan(&w);
    assert!(before.iter().all(|l| !l.contains("miss")), "{before:#?}");

    // A file of `conf` changes: its step's key and the later ones change; `app`'s does not.
    write(&w.path("recipes/conf"), "app.ini", "[app]\nport = 9090\n");
    let after = plan(&w);
    assert_eq!(key_of(&before, "copy app "), key_of(&after, "copy app "));
    assert_ne!(key_of(&before, "copy conf "), key_of(&after, "copy conf "));
    let why = after
        .iter()
        .find(|l| l.contains("why: file conf/app.ini"))
        .unwrap_or_else(|| panic!("{after:#?}"));
    assert!(
        why.contains("sha256:") && why.contains(" -> sha256:"),
        "{why}"
    );
    write(&w.path("recipes/conf"), "app.ini", "[app]\nport = 8080\n");
    assert_eq!(
        key_of(&plan(&w), "copy conf "),
        key_of(&before, "copy conf ")
    );

    // An excluded file changes nothing.
    write(&w.path("recipes/app"), "debug.log", "other noise\n");
    write(
        &w.path("recipes/app"),
        "secret.txt",
        "still not for the image\n",
    );
    assert_eq!(key_of(&plan(&w), "copy app "), key_of(&before, "copy app "));

    // Same size, same mtime, new content (the ctime moved): seen.
    let main = w.path("recipes/app/main.py");
    let mtime = fs::metadata(&main).unwrap().modified().unwrap();
    fs::write(&main, "print('ho')\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&main)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let rewritten = plan(&w);
    assert_ne!(
        key_of(&rewritten, "copy app "),
        key_of(&before, "copy app ")
    );
    assert!(
        rewritten
            .iter()
            .any(|l| l.contains("why: file app/main.py")),
        "{rewritten:#?}"
    );
    w.build("out/hello");

    // Replaced by another file (another inode) of the same size and mtime: seen.
    let tmp = w.path("recipes/main.py.new");
    fs::write(&tmp, "print('hu')\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(&tmp, &main).unwrap();
    let replaced = plan(&w);
    assert_ne!(
        key_of(&replaced, "copy app "),
        key_of(&rewritten, "copy app ")
    );
    let meta = w.build_metadata(w.cmd(), &w.recipe(), "out/hello");
    assert!(
        layer_entries(&w, &meta, "/srv/app")
            .iter()
            .any(|e| e.ends_with("srv/app/main.py")),
        "{meta}"
    );
}

#[test]
fn copy_errors_name_the_field() {
    let w = Work::setup();
    write(&w.path("recipes/app"), "a", "a");
    let text = fs::read_to_string(w.recipe()).unwrap();
    let lines = text.lines().count();
    for (entry, field, message) in [
        (
            "src = \"app/a\"\ndest = \"/srv/app\"\n",
            "copy[0].src",
            "is not a directory",
        ),
        (
            "src = \"../..\"\ndest = \"/srv/app\"\n",
            "copy[0].src",
            "outside the recipe's directory",
        ),
        (
            "src = \"app\"\ndest = \"srv/app\"\n",
            "copy[0].dest",
            "must be an absolute path",
        ),
        (
            "src = \"app\"\ndest = \"/srv\"\nexclude = [\"a[z-a]\"]\n",
            "copy[0].exclude",
            "exclude pattern `a[z-a]`",
        ),
        (
            "src = \"app\"\ndest = \"/srv\"\nmodes = 1\n",
            "modes",
            "unknown field",
        ),
    ] {
        fs::write(w.recipe(), format!("{text}\n[[copy]]\n{entry}")).unwrap();
        let o = w.cmd().arg("check").arg(w.recipe()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{entry}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("hello.toml:") && err.contains(message),
            "{entry}: {err}"
        );
        // The line is in the appended entry.
        let line: usize = err
            .split("hello.toml:")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(line > lines, "{entry}: line {line} of {err}");
        assert!(err.contains(field) || field == "modes", "{entry}: {err}");
    }
}
