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

/// A cache artifact made by hand from machine A's key records, with `edit` applied to its
/// table, pushed to `dest` as an OCI layout.
fn tampered_artifact(w: &Work, dest: &str, flags: &[String], edit: &dyn Fn(&mut Value)) {
    use sha2::Digest as _;
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
    let keys = w.path("machine-a/keys");
    let first = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let key = first.file_stem().unwrap().to_string_lossy().into_owned();
    let rec: Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    let mut table = serde_json::json!({"version": 1, "keys": {key: rec.clone()}});
    edit(&mut table);
    let dir = w.path(&format!("artifact-{}", dest.len()));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |b: &[u8]| {
        let d = sha(b);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), b).unwrap();
        d
    };
    let digest = rec["digest"].as_str().unwrap();
    let blob = std::fs::read(w.path("machine-a/blobs/sha256").join(&digest[7..])).unwrap();
    put(&blob);
    let config = serde_json::to_vec(&table).unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.imgbuild.cache.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": rec["media_type"], "digest": digest, "size": blob.len()}]
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "buildcache"}}]}))
        .unwrap(),
    )
    .unwrap();
    assert_ok(
        &w.cmd()
            .args(flags)
            .arg("push")
            .arg(&dir)
            .arg(dest)
            .output()
            .unwrap(),
    );
}

#[test]
fn a_registry_cache_that_lies_about_a_layer_is_refused() {
    let reg = crate::servers::Registry::start(crate::servers::Mode::Plain);
    let w = Work::setup();
    let cache_ref = format!("{}/cache/hello:buildcache", reg.host);
    assert_ok(
        &w.cmd_with_cache(&w.path("machine-a"))
            .args(reg.imgbuild_flags())
            .arg("build")
            .arg(w.recipe())
            .args(["--cache-to", &cache_ref])
            .output()
            .unwrap(),
    );
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "lying",
            Box::new(|t: &mut Value| {
                let k = t["keys"]
                    .as_object_mut()
                    .unwrap()
                    .values_mut()
                    .next()
                    .unwrap();
                k["diff_id"] = format!("sha256:{}", "ab".repeat(32)).into();
            }),
            "does not hold what its record says",
        ),
        (
            "future",
            Box::new(|t: &mut Value| t["version"] = 2.into()),
            "written by another version of imgbuild",
        ),
    ];
    for (name, edit, expected) in cases {
        let dest = format!("{}/cache/{name}:buildcache", reg.host);
        tampered_artifact(&w, &dest, &reg.imgbuild_flags(), &*edit);
        let fresh = w.path(&format!("machine-{name}"));
        let o = w
            .cmd_with_cache(&fresh)
            .args(reg.imgbuild_flags())
            .arg("build")
            .arg(w.recipe())
            .args(["--cache-from", &dest])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{name}: {}", crate::stderr(&o));
        assert!(
            crate::stderr(&o).contains(expected),
            "{name}: {}",
            crate::stderr(&o)
        );
        let keys = std::fs::read_dir(fresh.join("keys")).unwrap().count();
        assert_eq!(keys, 0, "{name}: no key imported");
    }
}
