//! `imgbuild cache ls | gc | prune` and builds sharing one cache: the cache shrinks to the
//! limit, a kept key never loses its blob, the next build still works, and concurrent builds
//! (and a gc waiting for them) leave correct images.

use serde_json::Value;

use crate::{Work, assert_ok, stdout};

fn ls(w: &Work) -> Value {
    let o = w.cmd().args(["cache", "ls", "--json"]).output().unwrap();
    assert_ok(&o);
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Every key's layer blob is in the cache.
fn keys_have_blobs(inv: &Value) {
    let blobs: Vec<&str> = inv["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    for k in inv["keys"].as_array().unwrap() {
        let d = k["record"]["digest"].as_str().unwrap();
        assert!(blobs.contains(&d), "key {} lost its blob {d}", k["key"]);
    }
}

#[test]
fn gc_and_prune_shrink_the_cache_and_builds_still_work() {
    let w = Work::setup();
    let digest = w.build("out/a");
    let inv = ls(&w);
    let size = inv["size"].as_u64().unwrap();
    let keys = inv["keys"].as_array().unwrap().len();
    assert!(keys >= 5 && size > 0, "{inv}");
    keys_have_blobs(&inv);
    let o = w.cmd().args(["cache", "ls"]).output().unwrap();
    assert_ok(&o);
    assert!(
        stdout(&o).contains(&format!("{keys} keys")),
        "{}",
        stdout(&o)
    );

    // Recently used: prune keeps everything.
    let o = w
        .cmd()
        .args(["cache", "prune", "--older-than", "1h"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("prune: removed 0 keys and 0 blobs"),
        "{}",
        stdout(&o)
    );
    assert_eq!(ls(&w)["size"].as_u64().unwrap(), size);

    // Half the size: least recently used first, kept keys keep their blobs.
    let half = size / 2;
    let o = w
        .cmd()
        .args(["cache", "gc", "--max-size", &half.to_string()])
        .output()
        .unwrap();
    assert_ok(&o);
    let after = ls(&w);
    assert!(after["size"].as_u64().unwrap() <= half, "{after}");
    assert!(
        !after["keys"].as_array().unwrap().is_empty(),
        "gc kept the newest keys"
    );
    keys_have_blobs(&after);
    assert_eq!(w.build("out/b"), digest, "the build after gc");

    // Down to nothing, and the next build still makes the same image.
    let o = w
        .cmd()
        .args(["cache", "gc", "--max-size", "0"])
        .output()
        .unwrap();
    assert_ok(&o);
    let empty = ls(&w);
    assert_eq!(empty["size"], 0, "{empty}");
    assert_eq!(empty["keys"], serde_json::json!([]));
    assert_eq!(w.build("out/c"), digest);

    // Everything is older than 0 s.
    let o = w
        .cmd()
        .args(["cache", "prune", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(ls(&w)["size"], 0);

    let o = w
        .cmd()
        .args(["cache", "gc", "--max-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn concurrent_builds_and_a_gc_share_one_cache() {
    let w = Work::setup();
    let reference = w.build("out/ref");
    let fresh = w.path("shared-cache");
    let spawn = |out: &str| {
        let mut c = w.spawnable(&fresh);
        c.arg("build")
            .arg(w.recipe())
            .arg("--out")
            .arg(w.path(out))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("out/x");
    let b = spawn("out/y");
    // A gc started meanwhile waits for the builds (the cache lock), then empties the cache.
    let mut gc = w.spawnable(&fresh);
    let gc = gc
        .args(["cache", "gc", "--max-size", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for child in [a, b] {
        let o = child.wait_with_output().unwrap();
        assert_ok(&o);
        assert_eq!(
            stdout(&o).trim(),
            reference,
            "same image from the shared cache"
        );
    }
    assert_ok(&gc.wait_with_output().unwrap());
    // The layouts are whole: skopeo reads both.
    for out in ["out/x", "out/y"] {
        let layout = format!("oci:{}:latest", w.path(out).display());
        let v: Value = serde_json::from_str(&crate::tool("skopeo", &["inspect", &layout])).unwrap();
        assert_eq!(v["Digest"], reference.as_str());
    }
}

#[test]
fn a_registry_cache_lets_another_machine_build_nothing() {
    let reg = crate::servers::Registry::start(crate::servers::Mode::Plain);
    let w = Work::setup();
    let cache_ref = format!("{}/cache/hello:buildcache", reg.host);

    // Machine A: the first export; nothing to import yet.
    let o = w
        .cmd_with_cache(&w.path("machine-a"))
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/a"))
        .args(["--cache-from", &cache_ref, "--cache-to", &cache_ref])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();
    let log = crate::stderr(&o);
    assert!(log.contains("imported 0 cached steps"), "{log}");
    assert!(log.contains("exported "), "{log}");

    // Machine B, empty cache: every step comes from the registry cache.
    let meta = w.path("b.json");
    let o = w
        .cmd_with_cache(&w.path("machine-b"))
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/b"))
        .args(["--cache-from", &cache_ref, "--metadata-file"])
        .arg(&meta)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest, "the same image");
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["cache"]["misses"], 0, "no step rebuilt: {m}");
    assert!(m["cache"]["hits"].as_u64().unwrap() >= 5, "{m}");

    // An ordinary image is not a cache.
    let image = format!("{}/cache/plain:1", reg.host);
    assert_ok(
        &w.cmd()
            .args(reg.imgbuild_flags())
            .arg("build")
            .arg(w.recipe())
            .arg("--out")
            .arg(w.path("out/p"))
            .args(["--push", &image])
            .output()
            .unwrap(),
    );
    let o = w
        .cmd_with_cache(&w.path("machine-c"))
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(w.recipe())
        .args(["--cache-from", &image])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        crate::stderr(&o).contains("is not an imgbuild build cache"),
        "{}",
        crate::stderr(&o)
    );
}
