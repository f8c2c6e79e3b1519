//! `imgbuild check`: every recipe in recipes/ passes, and bad input fails with exit code 2 and
//! a message naming file, line, column and field.

use crate::{Work, assert_ok, repo, stderr, stdout};

#[test]
fn check_accepts_every_recipe_in_recipes() {
    let w = Work::setup();
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("recipes")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // Recipes with required variables (the Debian mirror) get them as a user would.
            let o = w
                .cmd()
                .args(["--var", "mirror=http://127.0.0.1:9/debian"])
                .args([
                    "--var",
                    "security_mirror=http://127.0.0.1:9/debian-security",
                ])
                .arg("check")
                .arg(&p)
                .output()
                .unwrap();
            assert_ok(&o);
            assert!(stdout(&o).contains(": ok"), "{}", stdout(&o));
            n += 1;
        }
    }
    assert!(n >= 2, "expected at least hello and coderall, found {n}");
}

#[test]
fn unpinned_download_is_a_warning_naming_the_line() {
    let w = Work::setup();
    let o = w
        .cmd()
        .arg("check")
        .arg(repo().join("recipes/coderall.toml"))
        .output()
        .unwrap();
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("coderall.toml:72:7: `download[0].url`"),
        "{err}"
    );
    assert!(err.contains("imgbuild lock"), "{err}");
}

const HEAD: &str = "[image]\nname = \"t\"\n";

/// (case, recipe text, expected `line:column`, expected field, expected words)
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "pip index with credentials",
        "[pip]\npackages = [\"x\"]\nindex_url = \"https://u:secret@pypi.example/simple\"\n",
        "5:13",
        "pip.index_url",
        "holds credentials",
    ),
    (
        "pip index not http",
        "[pip]\npackages = [\"x\"]\nindex_url = \"ftp://pypi.example/simple\"\n",
        "5:13",
        "pip.index_url",
        "must be an http:// or https:// URL",
    ),
    (
        "unknown key",
        "[image]\nname = \"t\"\nnmae = \"x\"\n",
        "3:1",
        "image.nmae",
        "unknown field",
    ),
    (
        "unknown table",
        "[image]\nname = \"t\"\n[imag]\n",
        "3:2",
        "imag",
        "unknown field",
    ),
    (
        "wrong type",
        "[image]\nname = 3\n",
        "2:8",
        "image.name",
        "invalid type",
    ),
    (
        "missing name",
        "[image]\nbase = \"scratch\"\n",
        "1:1",
        "image",
        "missing field `name`",
    ),
    (
        "bad name",
        "[image]\nname = \"Bad Name\"\n",
        "2:8",
        "image.name",
        "not a valid image name",
    ),
    (
        "relative dest",
        "[[file]]\ndest = \"etc/motd\"\ncontent = \"x\"\n",
        "4:8",
        "file[0].dest",
        "absolute path",
    ),
    (
        "dotdot dest",
        "[[file]]\ndest = \"/etc/../../x\"\ncontent = \"x\"\n",
        "4:8",
        "file[0].dest",
        "`..`",
    ),
    (
        "bad sha256",
        "[[download]]\nurl = \"http://127.0.0.1/x\"\nsha256 = \"abc\"\ndest = \"/x\"\n",
        "5:10",
        "download[0].sha256",
        "not a sha256",
    ),
    (
        "unknown var",
        "[[file]]\ndest = \"/home/${var.nobody}\"\ncontent = \"x\"\n",
        "4:8",
        "file[0].dest",
        "unknown variable `${var.nobody}`",
    ),
    (
        "src outside",
        "[[file]]\ndest = \"/x\"\nsrc = \"../../etc/passwd\"\n",
        "5:7",
        "file[0].src",
        "outside the recipe's directory",
    ),
    (
        "src missing",
        "[[file]]\ndest = \"/x\"\nsrc = \"nope.txt\"\n",
        "5:7",
        "file[0].src",
        "cannot read",
    ),
    (
        "content and src",
        "[[file]]\ndest = \"/x\"\ncontent = \"a\"\nsrc = \"files/greet.sh\"\n",
        "6:7",
        "file[0].src",
        "not both",
    ),
    (
        "bad mode",
        "[[file]]\ndest = \"/x\"\ncontent = \"a\"\nmode = \"0999\"\n",
        "6:8",
        "file[0].mode",
        "not an octal number",
    ),
    (
        "dest and extract",
        "[[download]]\nurl = \"http://h/x.tar\"\nsha256 = \"$S\"\ndest = \"/x\"\nextract = \"/y\"\n",
        "7:11",
        "download[0].extract",
        "not both",
    ),
    (
        "bad url",
        "[[download]]\nurl = \"ftp://h/x\"\nsha256 = \"$S\"\ndest = \"/x\"\n",
        "4:7",
        "download[0].url",
        "http:// or https://",
    ),
    (
        "unknown platform var",
        "[[download]]\nurl = \"http://h/${cpu}\"\nsha256 = \"$S\"\ndest = \"/x\"\n",
        "4:7",
        "download[0].url",
        "unknown variable `${cpu}`",
    ),
    (
        "bad platform",
        "[image]\nname = \"t\"\nplatform = \"windows/amd64\"\n",
        "3:12",
        "image.platform",
        "not supported",
    ),
    (
        "bad sudo",
        "[[user]]\nname = \"eric\"\nsudo = \"always\"\n",
        "5:8",
        "user[0].sudo",
        "not supported",
    ),
    (
        "bad user name",
        "[[user]]\nname = \"Eric\"\n",
        "4:8",
        "user[0].name",
        "not a valid user name",
    ),
    (
        "bad tag",
        "[target.oci]\ntags = [\"no spaces\"]\n",
        "4:9",
        "target.oci.tags[0]",
        "not a valid OCI tag",
    ),
    (
        "bad compression",
        "[target.oci]\ncompression = \"lz4\"\n",
        "4:15",
        "target.oci.compression",
        "unknown variant",
    ),
    (
        "bad env name",
        "[env]\n\"1X\" = \"y\"\n",
        "4:8",
        "env.1X",
        "not a valid environment variable",
    ),
    (
        "syntax error",
        "[image\nname = \"t\"\n",
        "1:7",
        "",
        "unclosed table",
    ),
    (
        "duplicate dest",
        "[[file]]\ndest = \"/x\"\ncontent = \"a\"\n[[symlink]]\npath = \"/x\"\ntarget = \"/y\"\n",
        "7:8",
        "symlink[0].path",
        "more than one entry",
    ),
    (
        "bad ppa",
        "[[apt.sources]]\nname = \"p\"\nuri = \"ppa:only-owner\"\n",
        "5:7",
        "apt.sources[0].uri",
        "ppa:OWNER/NAME",
    ),
    (
        "root as a file",
        "[[file]]\ndest = \"/\"\ncontent = \"x\"\n",
        "4:8",
        "file[0].dest",
        "root directory",
    ),
    (
        "file under a file",
        "[[file]]\ndest = \"/etc/a\"\ncontent = \"x\"\n[[file]]\ndest = \"/etc/a/b\"\ncontent = \"y\"\n",
        "7:8",
        "file[1].dest",
        "`/etc/a/b` is under `/etc/a`, which `file[0].dest` makes",
    ),
    (
        "file under a symlink",
        "[[symlink]]\npath = \"/etc/x\"\ntarget = \"/tmp\"\n[[file]]\ndest = \"/etc/x/y\"\ncontent = \"y\"\n",
        "7:8",
        "file[0].dest",
        "`/etc/x/y` is under `/etc/x`, which `symlink[0].path` makes",
    ),
    (
        "var refers to itself",
        "[vars]\na = \"${var.a}\"\n",
        "4:5",
        "vars.a",
        "cycle: a -> a",
    ),
    (
        "vars in a cycle",
        "[vars]\na = \"x${var.b}\"\nb = \"${var.a}\"\n",
        "4:5",
        "vars.a",
        "cycle: a -> b -> a",
    ),
    (
        "platform and platforms",
        "[image]\nname = \"t\"\nplatform = \"linux/amd64\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n",
        "4:13",
        "image.platforms",
        "not both",
    ),
    (
        "a platform twice",
        "[image]\nname = \"t\"\nplatforms = [\"linux/amd64\", \"linux/amd64\"]\n",
        "3:29",
        "image.platforms[1]",
        "listed twice",
    ),
    (
        "bad platform in platforms",
        "[image]\nname = \"t\"\nplatforms = [\"linux/s390x\"]\n",
        "3:14",
        "image.platforms[0]",
        "not supported",
    ),
    (
        "one sha256 for several platforms",
        "[image]\nname = \"t\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n[[download]]\nurl = \"https://example.com/t-${arch}\"\nsha256 = \"$S\"\ndest = \"/t\"\n",
        "6:10",
        "download[0].sha256",
        "differs per platform",
    ),
    (
        "bad bootstrap",
        "[apt]\nbootstrap = \"fat\"\n",
        "4:13",
        "apt.bootstrap",
        "only \"minbase\"",
    ),
];

#[test]
fn bad_recipes_fail_with_file_line_column_and_field() {
    let w = Work::setup();
    let sha = "a".repeat(64);
    assert!(CASES.len() >= 15);
    for (name, body, at, field, words) in CASES {
        let text = if body.starts_with("[image]") || body.starts_with("[imag") {
            body.to_string()
        } else {
            format!("{HEAD}{body}")
        };
        let text = text.replace("$S", &sha);
        let path = w.path(&format!("recipes/case-{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap();
        let o = w.cmd().arg("check").arg(&path).output().unwrap();
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "case `{name}` should exit 2:\n{text}\n{err}"
        );
        let loc = format!("{}:{at}: ", path.display());
        assert!(
            err.contains(&loc),
            "case `{name}`: expected location `{loc}` in:\n{err}"
        );
        if !field.is_empty() {
            assert!(
                err.contains(&format!("`{field}`")),
                "case `{name}`: expected field `{field}` in:\n{err}"
            );
        }
        assert!(
            err.contains(words),
            "case `{name}`: expected `{words}` in:\n{err}"
        );
        assert!(
            err.contains(" | "),
            "case `{name}`: expected a source snippet in:\n{err}"
        );
    }
}

#[test]
fn unknown_var_override_is_a_warning() {
    let w = Work::setup();
    let o = w
        .cmd()
        .args(["check", "--var", "nosuch=1"])
        .arg(w.recipe())
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stderr(&o).contains("warning: ")
            && stderr(&o).contains("--var nosuch=...: no such variable"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn proxmox_target_mistakes_fail_clearly() {
    let w = Work::setup();
    // --deploy and --push belong to their targets: usage errors.
    for (args, want) in [
        (vec!["build", "--deploy"], "--deploy needs --target proxmox"),
        (
            vec!["build", "--target", "proxmox", "--push", "127.0.0.1:9/x"],
            "--push needs --target oci",
        ),
    ] {
        let o = w.cmd().args(args).arg(w.recipe()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    // No API address or token: usage errors, before anything is read.
    let o = w
        .cmd()
        .env_remove("PROXMOX_URL")
        .env_remove("PROXMOX_TOKEN")
        .arg("deploy")
        .arg(w.recipe())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("set PROXMOX_URL"), "{}", stderr(&o));
    // The example's base has no Debian archive: the VM packages cannot be found, and the
    // error says which.
    let o = w
        .cmd()
        .args(["build", "--target", "proxmox"])
        .arg(w.recipe())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("building the proxmox target of")
            && stderr(&o).contains("is not in any source"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn names_and_paths_longer_than_linux_allows_are_refused() {
    let w = Work::setup();
    let long_name = format!("/opt/{}", "n".repeat(256));
    let long_path = format!("/{}", format!("{}/", "p".repeat(200)).repeat(21));
    for (dest, words) in [
        (long_name, "Linux allows 255"),
        (long_path, "Linux allows 4096"),
    ] {
        let path = w.path("recipes/long.toml");
        std::fs::write(
            &path,
            format!("{HEAD}[[file]]\ndest = \"{dest}\"\ncontent = \"x\"\n"),
        )
        .unwrap();
        let o = w.cmd().arg("check").arg(&path).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("long.toml:4:8: `file[0].dest`"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains(words), "{}", stderr(&o));
    }
}

#[test]
fn unreadable_input_files_are_bad_input_with_a_place() {
    let w = Work::setup();
    // A recipe that is not UTF-8: its line and byte offset.
    let path = w.path("recipes/latin1.toml");
    std::fs::write(&path, b"[image]\nname = \"caf\xe9\"\n").unwrap();
    let o = w.cmd().arg("check").arg(&path).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("latin1.toml:2: not UTF-8 (invalid byte at offset 19)"),
        "{}",
        stderr(&o)
    );
    // An endless file is read no further than the limit.
    let o = w
        .cmd()
        .arg("check")
        .arg("/dev/zero")
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("larger than 16777216 bytes"),
        "{}",
        stderr(&o)
    );
    // A Dockerfile that is not UTF-8.
    let df = w.path("Dockerfile");
    std::fs::write(&df, b"FROM debian:12\nRUN echo \xff\n").unwrap();
    let o = w.cmd().arg("import").arg(&df).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Dockerfile:2: not UTF-8"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_closed_or_full_stdout_is_not_a_panic() {
    let w = Work::setup();
    #[allow(deprecated)]
    let bin = assert_cmd::cargo::cargo_bin("imgbuild");
    let recipe = w.recipe();
    let run = |redirect: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "\"{}\" --var fixtures=http://127.0.0.1:9 plan \"{}\" {redirect}; echo \"rc=$?\" >&2",
                bin.display(),
                recipe.display()
            ))
            .env("IMGBUILD_CACHE", w.path("cache"))
            .output()
            .unwrap()
    };
    let o = run("| head -c 0");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("rc=0"), "a closed pipe ends quietly: {err}");
    let o = run("> /dev/full");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("writing to stdout: No space left on device"),
        "{err}"
    );
    assert!(err.contains("rc=1"), "{err}");
}

#[test]
fn a_bad_push_reference_is_bad_input_for_build_too() {
    let w = Work::setup();
    let o = w
        .cmd()
        .arg("build")
        .arg(w.recipe())
        .args(["--push", "bad ref!!"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_killed_write_leaves_nothing_behind_and_blobs_are_readable() {
    use std::os::unix::fs::PermissionsExt;
    let w = Work::setup();
    w.build("out/hello");
    let out = w.path("out/hello");
    // What a `kill -9` in the middle of writing index.json or a blob leaves.
    std::fs::write(out.join(".tmpAbC123"), b"half").unwrap();
    std::fs::write(out.join("blobs/sha256/.tmpXyZ789"), b"half a blob").unwrap();
    w.build("out/hello");
    let mut names = Vec::new();
    for d in [out.clone(), out.join("blobs/sha256")] {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
            if d.ends_with("sha256") {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o644, "{:?}", e.path());
            }
        }
    }
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn a_hand_edited_proxmox_manifest_is_refused_clearly() {
    let w = Work::setup();
    let dir = w.path("out/pve");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, sha: &str| serde_json::json!({"file": name, "sha256": sha, "size": 1});
    let good = "a".repeat(64);
    for (disk, seed, words) in [
        (
            file("d.qcow2", "abc"),
            file("s.iso", &good),
            "`disk.sha256` = `abc` is not 64 lowercase hex digits",
        ),
        (
            file("d.qcow2", &good),
            file("../../etc/shadow", &good),
            "`seed.file` = `../../etc/shadow` is not a file name",
        ),
    ] {
        let manifest = serde_json::json!({
            "name": "t", "disk": disk, "disk_format": "qcow2", "disk_size": 1,
            "kernel": "6.1", "cmdline": "", "root_partuuid": "x", "esp_partuuid": "y",
            "seed": seed, "user_data": file("user-data", &good),
            "vm_packages": [], "layers": []
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        let o = w
            .cmd()
            .env("PROXMOX_URL", "http://127.0.0.1:9")
            .env(
                "PROXMOX_TOKEN",
                "root@pam!t=00000000-0000-0000-0000-000000000000",
            )
            .arg("deploy")
            .arg(w.recipe())
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(stderr(&o).contains(words), "{}", stderr(&o));
    }
}
