//! Builds: reproducible digests, cache hits, key propagation, verified downloads, layout bases.

use std::fs;

use serde_json::Value;

use crate::{Work, assert_ok, copy_dir, stderr, stdout};

fn metadata(w: &Work, out: &str) -> Value {
    w.build_metadata(w.cmd(), &w.recipe(), out)
}

/// Overwrites `path` in place with as many `x` bytes, then puts its mtime back: only the
/// ctime tells it changed.
fn rewrite_keeping_mtime(path: &std::path::Path) {
    let md = fs::metadata(path).unwrap();
    fs::write(path, vec![b'x'; md.len() as usize]).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(md.modified().unwrap())
        .unwrap();
}

/// The hex digest of layer `i` of a build's metadata.
fn layer_hex(meta: &Value, i: usize) -> String {
    meta["layers"][i]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

#[test]
fn same_recipe_twice_gives_the_same_digest_anywhere_anytime() {
    let a = Work::setup();
    let b = Work::setup();
    // Different checkout times: touch b's recipe files a while later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    copy_dir(&a.path("recipes"), &b.path("recipes"));
    let da = a.build("out/first");
    // Same recipe means same URLs: point b at a's fixture server.
    let same_url = format!("fixtures={}", a.server.url);
    let o = b
        .cmd_with_cache(&b.path("other-cache"))
        .args(["--var", &same_url])
        .arg("build")
        .arg(b.recipe())
        .arg("--out")
        .arg(b.path("elsewhere/second"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(da, stdout(&o).trim());
    assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
    // The layouts hold the same bytes.
    let ia = fs::read(a.path("out/first/index.json")).unwrap();
    let ib = fs::read(b.path("elsewhere/second/index.json")).unwrap();
    assert_eq!(ia, ib);

    // SOURCE_DATE_EPOCH is an input: another value gives another image.
    let o = b
        .cmd()
        .args(["--var", &same_url])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("build")
        .arg(b.recipe())
        .arg("--out")
        .arg(b.path("out/epoch"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_ne!(da, stdout(&o).trim());
}

#[test]
fn warm_rebuild_hits_every_step_and_downloads_nothing() {
    let w = Work::setup();
    let first = metadata(&w, "out/a");
    assert_eq!(first["cache"]["hits"], 0);
    let steps = first["layers"].as_array().unwrap().len();
    assert_eq!(steps, 6, "{first:#}");
    assert_eq!(w.server.hits("/tool-amd64.tar.gz"), 1);

    let second = metadata(&w, "out/b");
    assert_eq!(second["cache"]["misses"], 0, "{second:#}");
    assert_eq!(second["cache"]["hits"], steps);
    assert!(
        second["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cache"] == "hit")
    );
    assert_eq!(first["manifest"], second["manifest"]);
    assert_eq!(
        w.server.hits("/tool-amd64.tar.gz"),
        1,
        "a cached download is never fetched again"
    );
    assert_eq!(w.server.hits("/compose-linux-x86_64"), 1);

    // `plan` agrees: every step is a hit.
    let o = w.cmd().arg("plan").arg(w.recipe()).output().unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).matches(" hit ").count(), steps, "{}", stdout(&o));
}

fn plan_keys(w: &Work) -> Vec<String> {
    let o = w.cmd().arg("plan").arg(w.recipe()).output().unwrap();
    assert_ok(&o);
    stdout(&o)
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn changing_one_file_changes_its_step_and_every_later_key_only() {
    let w = Work::setup();
    let before = plan_keys(&w);
    assert_eq!(before.len(), 6);
    let o = w.cmd().arg("plan").arg(w.recipe()).output().unwrap();
    let files_step = stdout(&o)
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .position(|l| l.contains(" files "))
        .unwrap();

    fs::write(
        w.path("recipes/files/greet.sh"),
        "#!/bin/sh\necho changed\n",
    )
    .unwrap();
    let after = plan_keys(&w);
    for i in 0..files_step {
        assert_eq!(
            before[i], after[i],
            "step {i} is before the change and keeps its key"
        );
    }
    for i in files_step..before.len() {
        assert_ne!(
            before[i], after[i],
            "step {i} is at or after the change and gets a new key"
        );
    }
    // Only the file's content matters, not its mtime.
    let t = fs::File::options()
        .write(true)
        .open(w.path("recipes/files/greet.sh"))
        .unwrap();
    t.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(after, plan_keys(&w));
}

#[test]
fn a_download_that_does_not_match_its_sha256_fails_and_leaves_nothing() {
    let w = Work::setup();
    let text = fs::read_to_string(w.recipe()).unwrap();
    let good = "c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855";
    let bad = "0".repeat(64);
    fs::write(w.recipe(), text.replace(good, &bad)).unwrap();
    let o = w.build_output("out/x");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("expected sha256:{bad}")), "{err}");
    assert!(err.contains(&format!("found sha256:{good}")), "{err}");
    assert!(!w.path("out/x").exists(), "no output for a failed build");
    let blobs: Vec<_> = fs::read_dir(w.path("cache/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !blobs
            .iter()
            .any(|b| b.to_string_lossy() == good || b.to_string_lossy() == bad),
        "{blobs:?}"
    );
    assert_eq!(
        fs::read_dir(w.path("cache/keys")).unwrap().count(),
        0,
        "no step was recorded"
    );
    assert_eq!(
        fs::read_dir(w.path("cache/tmp")).unwrap().count(),
        0,
        "no temp file left behind"
    );
}

#[test]
fn a_corrupted_cache_blob_is_detected_and_rebuilt() {
    let w = Work::setup();
    let first = metadata(&w, "out/a");
    let layer = layer_hex(&first, 3);
    fs::write(w.path(&format!("cache/blobs/sha256/{layer}")), b"garbage").unwrap();
    let o = w.build_output("out/b");
    assert_ok(&o);
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), first["manifest"].as_str().unwrap());
}

#[test]
fn name_shortcut_builds_recipes_name_into_out_name() {
    let w = Work::setup();
    let o = w.cmd().arg("hello").output().unwrap();
    assert_ok(&o);
    assert!(w.path("out/hello/index.json").is_file());
    // Global flags after NAME too, as a cron line writes them.
    #[allow(deprecated)]
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"))
        .current_dir(w.dir.path())
        .env("IMGBUILD_CACHE", w.path("cache"))
        .args(["hello", "--progress", "plain", "--out", "out/again"])
        .args(["--var", &format!("fixtures={}", w.server.url)])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(w.path("out/again/index.json").is_file());
    assert!(
        stderr(&o).contains("==> "),
        "plain progress lines: {}",
        stderr(&o)
    );
    let o = w.cmd().arg("nosuchrecipe").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("recipes/nosuchrecipe.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_oci_layout_base_is_reused_byte_for_byte() {
    let w = Work::setup();
    let base = metadata(&w, "out/hello");
    let child = format!(
        "[image]\nname = \"child\"\nbase = \"oci:{}:1.0\"\n\n[[file]]\ndest = \"/etc/child\"\ncontent = \"child\\n\"\n\n[[user]]\nname = \"bob\"\n",
        w.path("out/hello").display()
    );
    fs::write(w.path("recipes/child.toml"), child).unwrap();
    let m = w.build_metadata(w.cmd(), &w.path("recipes/child.toml"), "out/child");
    let base_layers: Vec<&Value> = base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let reused: Vec<&Value> = m["base_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(base_layers, reused);
    for d in reused {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        assert_eq!(
            fs::read(w.path(&format!("out/hello/blobs/sha256/{hex}"))).unwrap(),
            fs::read(w.path(&format!("out/child/blobs/sha256/{hex}"))).unwrap()
        );
    }
    // The base's users survive: bob is added next to eric, uid 1001.
    let passwd = crate::layout::unpack_file(&w, "out/child", "latest", "etc/passwd");
    assert!(
        passwd.contains("eric:x:1000:1000::/home/eric:/bin/bash"),
        "{passwd}"
    );
    assert!(
        passwd.contains("bob:x:1001:1001::/home/bob:/bin/sh"),
        "{passwd}"
    );
    // The base's env and cmd are inherited.
    let cfg = crate::layout::config(&w, "out/child", "latest");
    assert_eq!(cfg["config"]["Cmd"][0], "/usr/local/bin/greet");
    assert!(
        cfg["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "LANG=en_US.UTF-8")
    );
}

#[test]
fn replacing_a_base_directory_with_a_symlink_writes_a_whiteout() {
    let w = Work::setup();
    w.build("out/hello");
    let child = format!(
        "[image]\nname = \"child\"\nbase = \"oci:{}\"\n\n[[symlink]]\npath = \"/opt/tool\"\ntarget = \"/usr/local/tool\"\n",
        w.path("out/hello").display()
    );
    fs::write(w.path("recipes/child.toml"), child).unwrap();
    let m = w.build_metadata(w.cmd(), &w.path("recipes/child.toml"), "out/child");
    let hex = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let listing = crate::tool(
        "tar",
        &[
            "-tzf",
            w.path(&format!("out/child/blobs/sha256/{hex}"))
                .to_str()
                .unwrap(),
        ],
    );
    assert!(listing.lines().any(|l| l == "opt/.wh.tool"), "{listing}");
    let root = crate::layout::unpack(&w, "out/child", "latest");
    assert_eq!(
        fs::read_link(root.join("opt/tool")).unwrap(),
        std::path::PathBuf::from("/usr/local/tool")
    );
    assert!(
        root.join("usr/local/bin/greet").is_file(),
        "the rest of the base is kept"
    );
}

#[test]
fn zstd_layers_are_valid_and_readable_by_skopeo() {
    let w = Work::setup();
    let text = fs::read_to_string(w.recipe()).unwrap();
    fs::write(
        w.recipe(),
        text.replace(
            "tags = [\"latest\", \"1.0\"]",
            "tags = [\"latest\"]\ncompression = \"zstd\"",
        ),
    )
    .unwrap();
    let digest = w.build("out/z");
    let r = format!("oci:{}:latest", w.path("out/z").display());
    let v: Value = serde_json::from_str(&crate::tool("skopeo", &["inspect", "--raw", &r])).unwrap();
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let blob = w.path(&format!(
            "out/z/blobs/sha256/{}",
            l["digest"].as_str().unwrap().trim_start_matches("sha256:")
        ));
        crate::tool("zstd", &["-q", "-t", blob.to_str().unwrap()]);
    }
    // Another cache, same bytes: zstd output does not depend on the machine's thread count.
    let o = w
        .cmd_with_cache(&w.path("cache2"))
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/z2"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(digest, stdout(&o).trim());
}

#[test]
fn two_builds_sharing_one_cache_at_once_both_succeed() {
    let w = Work::setup();
    let spawn = |out: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"))
            .current_dir(w.dir.path())
            .env("IMGBUILD_CACHE", w.path("cache"))
            .args([
                "-q",
                "--var",
                &format!("fixtures={}", w.server.url),
                "build",
            ])
            .arg(w.recipe())
            .arg("--out")
            .arg(w.path(out))
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("out/a"));
        let b = s.spawn(|| spawn("out/b"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ok(&a);
    assert_ok(&b);
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(fs::read_dir(w.path("cache/tmp")).unwrap().count(), 0);
}

#[test]
fn per_architecture_downloads_take_the_platforms_url_and_sha256() {
    let w = Work::setup();
    let before = metadata(&w, "out/plain");
    let text = fs::read_to_string(w.recipe()).unwrap();
    let good = "c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855";
    let plain = "url = \"${var.fixtures}/compose-${os}-${uname_m}\"\nsha256 = \"c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855\"\ndest = \"/usr/local/bin/docker-compose\"\nmode = 0o755\n";
    assert!(text.contains(plain));
    // The top-level URL is wrong on purpose: amd64's entry replaces it, and its sha256 is the
    // only one given.
    let per_arch = format!(
        "url = \"${{var.fixtures}}/no-such-file\"\ndest = \"/usr/local/bin/docker-compose\"\nmode = 0o755\n\n\
         [download.arch.amd64]\nurl = \"${{var.fixtures}}/compose-linux-x86_64\"\nsha256 = \"{good}\"\n\n\
         [download.arch.arm64]\nurl = \"${{var.fixtures}}/compose-linux-aarch64\"\nsha256 = \"{}\"\n",
        "1".repeat(64)
    );
    fs::write(w.recipe(), text.replace(plain, &per_arch)).unwrap();
    let after = metadata(&w, "out/per-arch");
    // The same download for linux/amd64: the same image.
    assert_eq!(after["manifest"], before["manifest"]);
    // A platform the download has no entry for is refused by check, naming the field.
    let only_arm = text.replace(
        plain,
        &format!(
            "url = \"${{var.fixtures}}/compose\"\ndest = \"/usr/local/bin/docker-compose\"\n\n[download.arch.arm64]\nsha256 = \"{good}\"\n"
        ),
    );
    fs::write(w.recipe(), only_arm).unwrap();
    let o = w.cmd().arg("check").arg(w.recipe()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "`download[1].arch`: no entry for amd64 (the platform is linux/amd64); there are: arm64"
        ),
        "{e}"
    );
    assert!(e.contains("hello.toml:"), "{e}");
}

#[test]
fn signed_downloads_are_checked_against_the_pinned_signer() {
    use crate::apt_repo::Signer;
    let w = Work::setup();
    let files = w.path("signed");
    fs::create_dir_all(&files).unwrap();
    let compose = files.join("compose");
    fs::copy(
        crate::repo().join("fixtures/downloads/compose-linux-x86_64"),
        &compose,
    )
    .unwrap();
    let server = crate::FileServer::start(&files);
    // Upstream signs with a subkey (as most release keys do); the recipe pins the primary.
    let upstream = Signer::new("upstream");
    upstream.add_signing_subkey();
    fs::create_dir_all(w.path("recipes/keys")).unwrap();
    upstream.export(&w.path("recipes/keys/upstream.asc"), true);
    upstream.detach_sign(&compose, &files.join("compose.asc"), true);
    let text = fs::read_to_string(w.recipe()).unwrap();
    let plain = "url = \"${var.fixtures}/compose-${os}-${uname_m}\"\nsha256 = \"c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855\"\n";
    assert!(text.contains(plain));
    let signed = |sha: bool| {
        format!(
            "url = \"{0}/compose\"\n{1}signature = \"{0}/compose.asc\"\nsignature_key = \"keys/upstream.asc\"\nsigner = \"{2}\"\n",
            server.url,
            if sha {
                "sha256 = \"c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855\"\n"
            } else {
                ""
            },
            upstream.fingerprint()
        )
    };
    fs::write(w.recipe(), text.replace(plain, &signed(true))).unwrap();
    let build = |cache: &str, out: &str| {
        w.cmd_with_cache(&w.path(cache))
            .arg("build")
            .arg(w.recipe())
            .arg("--out")
            .arg(w.path(out))
            .output()
            .unwrap()
    };
    assert_ok(&build("c1", "out/good"));

    // Signed by another key: refused on a fresh cache, naming the download and the signer.
    let mallory = Signer::new("mallory");
    mallory.detach_sign(&compose, &files.join("compose.asc"), false);
    let o = build("c2", "out/mallory");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("compose.asc"), "{e}");
    assert!(
        e.contains(&format!(
            "made by a key other than {}",
            upstream.fingerprint()
        )),
        "{e}"
    );
    assert!(!w.path("out/mallory").exists());

    // Unpinned, so the lock trusts the signature: an altered file with upstream's signature
    // of the original is refused by `lock`.
    upstream.detach_sign(&compose, &files.join("compose.asc"), true);
    fs::write(&compose, b"#!/bin/sh\necho altered\n").unwrap();
    fs::write(w.recipe(), text.replace(plain, &signed(false))).unwrap();
    let o = w.cmd().arg("lock").arg(w.recipe()).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the signature does not match the file"),
        "{}",
        stderr(&o)
    );

    // A signature without its key is a recipe error, at check.
    let broken = text.replace(
        plain,
        &signed(true).replace("signature_key = \"keys/upstream.asc\"\n", ""),
    );
    fs::write(w.recipe(), broken).unwrap();
    let o = w.cmd().arg("check").arg(w.recipe()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`download[1].signature`: a signature needs `signature_key`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cached_blobs_are_trusted_by_their_stamp_and_hashed_again_when_changed() {
    use std::os::unix::fs::MetadataExt;
    let w = Work::setup();
    let first = metadata(&w, "out/a");
    let manifest = first["manifest"].as_str().unwrap().to_string();
    let layer = layer_hex(&first, 3);
    let blob = w.path(&format!("cache/blobs/sha256/{layer}"));
    assert!(
        w.path(&format!("cache/stamps/{layer}")).is_file(),
        "stamped when stored"
    );
    let rebuild = |out: &str| {
        let o = w.build_output(out);
        assert_ok(&o);
        assert_eq!(stdout(&o).trim(), manifest);
        stderr(&o)
    };
    let same_size_garbage = |path: &std::path::Path| {
        let len = fs::metadata(path).unwrap().len() as usize;
        vec![b'x'; len]
    };
    // Rewritten in place, same size, mtime put back: the ctime moved, so it is hashed again.
    rewrite_keeping_mtime(&blob);
    assert!(rebuild("out/b").contains("digest mismatch"));
    // Replaced by another file (another inode), same size and mtime: hashed again.
    let ino = fs::metadata(&blob).unwrap().ino();
    let other = w.path("other");
    fs::write(&other, same_size_garbage(&blob)).unwrap();
    fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(fs::metadata(&blob).unwrap().modified().unwrap())
        .unwrap();
    fs::rename(&other, &blob).unwrap();
    assert_ne!(fs::metadata(&blob).unwrap().ino(), ino);
    assert!(rebuild("out/c").contains("digest mismatch"));
    // Unchanged: trusted, not hashed (no mismatch), the same image.
    assert!(!rebuild("out/d").contains("digest mismatch"));

    // `cache verify` hashes everything: a healthy cache passes...
    let o = w.cmd().args(["cache", "verify"]).output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains(" 0 corrupt"), "{}", stdout(&o));
    // ...and a blob whose stamp was made to match its corrupt content (what bit rot looks
    // like to a stamp) is found, named, and removed.
    fs::write(&blob, same_size_garbage(&blob)).unwrap();
    let md = fs::metadata(&blob).unwrap();
    let forged = format!(
        "{} {} {}.{} {}.{}",
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    );
    fs::write(w.path(&format!("cache/stamps/{layer}")), forged).unwrap();
    // A build trusts it (it is not read: the point of the stamp), twice: marking the blob
    // used moves a stamp that held along with it. (Into the layout that already has the
    // blob, which is trusted the same way.)
    assert!(!rebuild("out/d").contains("digest mismatch"));
    assert!(!rebuild("out/d").contains("digest mismatch"));
    let o = w.cmd().args(["cache", "verify"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains(&layer), "{}", stdout(&o));
    assert!(stdout(&o).contains(" 1 corrupt"), "{}", stdout(&o));
    assert!(!blob.exists());
    assert!(!rebuild("out/e").contains("digest mismatch"));
}

/// A download changed in the cache (same size, mtime put back) is found by its stamp before a
/// step uses it, fetched again, and the image gets the real file.
#[test]
fn a_download_changed_in_the_cache_is_fetched_again_before_use() {
    let w = Work::setup();
    w.build("out/a");
    let sha = "c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855";
    rewrite_keeping_mtime(&w.path(&format!("cache/blobs/sha256/{sha}")));
    // Another destination: the download's step is built again from the cached file.
    let text = fs::read_to_string(w.recipe()).unwrap().replace(
        "/usr/local/bin/docker-compose\"",
        "/usr/local/bin/compose2\"",
    );
    fs::write(w.recipe(), text).unwrap();
    let fetched = w.server.hits("/compose-linux-x86_64");
    let o = w.build_output("out/b");
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("digest mismatch") && err.contains("downloading again"),
        "{err}"
    );
    assert_eq!(w.server.hits("/compose-linux-x86_64"), fetched + 1);
    let got = fs::read(super::layout::unpack(&w, "out/b", "latest").join("usr/local/bin/compose2"))
        .unwrap();
    assert_eq!(
        got,
        fs::read(super::repo().join("fixtures/downloads/compose-linux-x86_64")).unwrap()
    );
}

/// A rebuild into the same layout does not read the blobs it already holds while their stat is
/// the one they had when hashed; a blob changed there since (rewritten in place with its mtime
/// put back, or truncated) is hashed, found wrong and written again.
#[test]
fn an_output_layout_keeps_its_blobs_and_mends_a_changed_one() {
    use sha2::{Digest as _, Sha256};
    let w = Work::setup();
    let first = metadata(&w, "out/a");
    let layer = layer_hex(&first, 3);
    let blob = w.path(&format!("out/a/blobs/sha256/{layer}"));
    let sha = |p: &std::path::Path| format!("{:x}", Sha256::digest(fs::read(p).unwrap()));
    let rebuild = || {
        let again = metadata(&w, "out/a");
        assert_eq!(again["manifest"], first["manifest"]);
    };
    // Unchanged: left as it is (same inode, same ctime: not even rewritten).
    use std::os::unix::fs::MetadataExt;
    let before = fs::metadata(&blob).unwrap();
    rebuild();
    let after = fs::metadata(&blob).unwrap();
    assert_eq!(
        (before.ino(), before.ctime(), before.ctime_nsec()),
        (after.ino(), after.ctime(), after.ctime_nsec())
    );
    // Rewritten in place, same size, mtime put back: mended.
    rewrite_keeping_mtime(&blob);
    rebuild();
    assert_eq!(sha(&blob), layer);
    // Truncated: mended.
    fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(10)
        .unwrap();
    rebuild();
    assert_eq!(sha(&blob), layer);
}
