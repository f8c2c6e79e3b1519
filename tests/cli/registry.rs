//! Push and pull against the real CNCF distribution registry (`docker-registry`) on
//! 127.0.0.1, in three configurations: plain HTTP, htpasswd basic auth, and TLS with a CA
//! made by the test. Read back with skopeo.

use std::fs;

use serde_json::Value;

use crate::servers::{FaultProxy, Faults, Mode, Registry, TokenServer, p};
use crate::{Work, assert_ok, stderr, stdout, tool};

fn with_creds(mut c: assert_cmd::Command, reg: &Registry) -> assert_cmd::Command {
    if reg.mode == Mode::Basic {
        c.env("IMGBUILD_REGISTRY_USER", "tester")
            .env("IMGBUILD_REGISTRY_PASSWORD", "s3cret");
    }
    c.env("HOME", "/nonexistent-home");
    c
}

fn skopeo(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("skopeo", &args)
}

fn push_and_read_back(mode: Mode) {
    let reg = Registry::start(mode);
    let w = Work::setup();
    let dest = format!("{}/hello:1", reg.host);
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/hello"))
        .args(["--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();

    let mut args = vec!["inspect".to_string()];
    args.extend(reg.skopeo_flags(""));
    args.push(format!("docker://{dest}"));
    let v: Value = serde_json::from_str(&skopeo(&args)).unwrap();
    assert_eq!(
        v["Digest"],
        digest.as_str(),
        "skopeo sees the digest build printed"
    );

    // skopeo copy back into a layout: identical blobs.
    let back = w.path("back");
    let mut args = vec!["copy".to_string()];
    args.extend(reg.skopeo_flags("src-"));
    args.push(format!("docker://{dest}"));
    args.push(format!("oci:{}:1", back.display()));
    skopeo(&args);
    let ours = w.path("out/hello/blobs/sha256");
    for e in fs::read_dir(back.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            fs::read(e.path()).unwrap(),
            fs::read(ours.join(e.file_name())).unwrap(),
            "{:?}",
            e.file_name()
        );
    }

    // A second push uploads no blob; a push to another repository mounts instead.
    let uploads_before = reg.count("\"POST /v2/");
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(&dest)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        reg.count("\"POST /v2/"),
        uploads_before,
        "re-push starts no upload:\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("0 uploaded"), "{}", stderr(&o));
    let other = format!("{}/other:1", reg.host);
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(&other)
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(reg.count("mount=sha256:") > 0, "mounted");
    assert_eq!(
        reg.count("\"PUT /v2/other/blobs/uploads/"),
        0,
        "nothing uploaded to the second repository"
    );
    assert!(stderr(&o).contains("7 mounted"), "{}", stderr(&o));
}

#[test]
fn push_plain_http() {
    push_and_read_back(Mode::Plain);
}

#[test]
fn push_with_basic_auth() {
    push_and_read_back(Mode::Basic);
}

#[test]
fn push_over_tls_with_a_private_ca() {
    push_and_read_back(Mode::Tls);
}

#[test]
fn a_registry_base_is_pulled_and_its_layers_reused_byte_for_byte() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    let hello = w.path("out/hello");
    w.build("out/hello");
    skopeo(&[
        "copy".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:latest", hello.display()),
        format!("docker://{}/base:1", reg.host),
    ]);
    let recipe = format!(
        "[image]\nname = \"child\"\nbase = \"{}/base:1\"\n\n[[file]]\ndest = \"/etc/child\"\ncontent = \"child\\n\"\n",
        reg.host
    );
    fs::write(w.path("recipes/child.toml"), recipe).unwrap();
    // Its own cache: hello's layers are not there yet, they must come from the registry.
    let child = w.path("recipes/child.toml");
    let build = |out: &str| w.build_metadata(w.cmd_with_cache(&w.path("child-cache")), &child, out);
    let m = build("out/child");
    let base_blobs_fetched = reg.count("\"GET /v2/base/blobs/");
    assert!(base_blobs_fetched >= 7, "config and 6 layers fetched");
    for l in m["base_layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert_eq!(
            fs::read(hello.join("blobs/sha256").join(hex)).unwrap(),
            fs::read(w.path("out/child/blobs/sha256").join(hex)).unwrap()
        );
    }
    assert_eq!(m["base_layers"].as_array().unwrap().len(), 6);
    // Cached: a second build fetches no blob again, only the manifest.
    let again = build("out/child2");
    assert_eq!(again["manifest"], m["manifest"]);
    assert_eq!(
        reg.count("\"GET /v2/base/blobs/"),
        base_blobs_fetched,
        "blobs are never fetched twice"
    );
}

#[test]
fn bad_credentials_unknown_ca_and_missing_repository_fail_clearly() {
    let basic = Registry::start(Mode::Basic);
    let w = Work::setup();
    w.build("out/hello");
    let o = w
        .cmd()
        .env("IMGBUILD_REGISTRY_USER", "tester")
        .env("IMGBUILD_REGISTRY_PASSWORD", "wrong")
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", basic.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("access denied") && err.contains("check the user name and password"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password never appears: {err}");

    let tls = Registry::start(Mode::Tls);
    let o = w
        .cmd()
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", tls.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not trusted"), "{}", stderr(&o));
    assert_eq!(
        tls.count("PUT /v2/hello/manifests"),
        0,
        "no tag left behind"
    );

    let plain = Registry::start(Mode::Plain);
    let recipe = format!(
        "[image]\nname = \"child\"\nbase = \"{}/nosuch:1\"\n",
        plain.host
    );
    fs::write(w.path("recipes/missing.toml"), recipe).unwrap();
    let o = w
        .cmd()
        .arg("build")
        .arg(w.path("recipes/missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot pull the base image") && stderr(&o).contains("404"),
        "{}",
        stderr(&o)
    );
}

/// Adds `size` bytes of incompressible data to the example and builds it.
fn build_with_noise(w: &Work, size: usize) -> String {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(w.path("recipes/files/noise.bin"), noise).unwrap();
    let text = fs::read_to_string(w.recipe()).unwrap()
        + "\n[[file]]\ndest = \"/opt/noise.bin\"\nsrc = \"files/noise.bin\"\n";
    fs::write(w.recipe(), text).unwrap();
    w.build("out/hello")
}

/// Pushes through a fault proxy, then checks the image straight from the registry.
fn push_through_faults(size: usize, method: &str) {
    let reg = Registry::start(Mode::Plain);
    let proxy = FaultProxy::start(reg.host.clone(), Faults::CutFirstUpload);
    let w = Work::setup();
    let digest = build_with_noise(&w, size);
    let o = w
        .cmd()
        .args(["--insecure-registry", &proxy.host])
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/faulty:1", proxy.host))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    let injected = proxy.injected.lock().unwrap().clone();
    assert!(
        injected.contains(&"503") && injected.contains(&"drop"),
        "faults injected: {injected:?}"
    );
    assert!(
        proxy.cut.lock().unwrap().starts_with(method),
        "cut a {method}: {:?}",
        proxy.cut.lock().unwrap()
    );
    // Straight from the registry: the image is complete and every blob is intact
    // (skopeo verifies each blob's digest as it copies).
    let dest = format!("docker://{}/faulty:1", reg.host);
    let v: Value = serde_json::from_str(&skopeo(&[
        "inspect".into(),
        "--tls-verify=false".into(),
        dest.clone(),
    ]))
    .unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    skopeo(&[
        "copy".into(),
        "--src-tls-verify=false".into(),
        dest,
        format!("oci:{}:x", w.path("back").display()),
    ]);
}

#[test]
fn a_dropped_connection_and_a_503_still_give_a_complete_push() {
    // 1 MiB: a monolithic PUT, cut halfway; the upload restarts on a fresh session.
    push_through_faults(1 << 20, "PUT");
}

#[test]
fn a_chunked_upload_cut_midway_still_completes() {
    // 40 MiB: one PATCH (under a chunk), cut. Distribution drops a session after a cut PATCH
    // (a Range query answers 404), so the blob starts over on a fresh session.
    push_through_faults(40 << 20, "PATCH");
}

#[test]
fn a_multi_chunk_upload_resumes_from_the_registrys_range() {
    // 150 MiB of noise: a layer of three PATCHes (64 MiB chunks). The second is refused as
    // often as a request is tried; the push then asks where the upload stands (GET: `Range:
    // 0-67108863`, the session kept) and goes on from there instead of starting over.
    let reg = Registry::start(Mode::Plain);
    let proxy = FaultProxy::start(reg.host.clone(), Faults::RefuseLaterChunks);
    let w = Work::setup();
    let digest = build_with_noise(&w, 150 << 20);
    let o = w
        .cmd()
        .args(["--insecure-registry", &proxy.host])
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/chunked:1", proxy.host))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    let chunk = 64u64 << 20;
    let log = proxy.log.lock().unwrap().clone();
    let refused = proxy.cut.lock().unwrap().clone();
    assert!(
        refused.ends_with(&format!(" {}-{}", chunk, 2 * chunk - 1)),
        "the second chunk was refused: {refused:?}"
    );
    assert_eq!(proxy.injected.lock().unwrap().len(), 5);
    let big: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.starts_with("PATCH ") || (l.starts_with("GET ") && l.contains("/blobs/uploads/"))
        })
        .collect();
    let status = big
        .iter()
        .position(|l| l.starts_with("GET "))
        .unwrap_or_else(|| {
            let all: Vec<String> = log
                .iter()
                .map(|l| {
                    let w: Vec<&str> = l.split(' ').collect();
                    format!("{} {}", w[0], w[w.len() - 1])
                })
                .collect();
            panic!("the upload's state was asked: {all:?}")
        });
    let after: Vec<&str> = big[status + 1..]
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        after.first().copied(),
        Some(format!("{}-{}", chunk, 2 * chunk - 1).as_str()),
        "resumed at the second chunk: {big:?}"
    );
    assert!(
        after
            .get(1)
            .is_some_and(|r| r.starts_with(&format!("{}-", 2 * chunk))),
        "then the third: {big:?}"
    );
    assert_eq!(
        big.iter().filter(|l| l.ends_with(" 0-67108863")).count(),
        1,
        "no restart from 0: {big:?}"
    );
    // The blob is intact: skopeo checks every digest as it copies.
    skopeo(&[
        "copy".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/chunked:1", reg.host),
        format!("oci:{}:x", w.path("back").display()),
    ]);
}

#[test]
fn a_blob_changed_in_the_layout_is_refused_before_the_registry_completes_it() {
    // 70 MiB of noise: a layer of two PATCHes. One byte of its last MiB is changed in place
    // (same size, same mtime): the upload hashes what it sends and cuts the second PATCH
    // before its last byte, so the registry never gets the final PUT nor the manifest.
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    build_with_noise(&w, 70 << 20);
    let blobs = w.path("out/hello/blobs/sha256");
    let layer = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let md = fs::metadata(&layer).unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x55;
    fs::write(&layer, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&layer)
        .unwrap()
        .set_modified(md.modified().unwrap())
        .unwrap();
    let o = w
        .cmd()
        .args(reg.imgbuild_flags())
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/corrupt:1", reg.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let hex = layer.file_name().unwrap().to_str().unwrap();
    let err = stderr(&o);
    assert!(
        err.contains("digest mismatch") && err.contains(hex) && err.contains("not uploaded"),
        "{err}"
    );
    assert!(
        reg.count("\"PATCH /v2/corrupt/blobs/uploads/") >= 2,
        "{}",
        reg.log()
    );
    // The other blobs' final PUTs are in the log; the changed one's is not.
    assert!(reg.count("digest=sha256:") >= 1, "{}", reg.log());
    assert_eq!(
        reg.count(&format!("digest=sha256:{hex}")),
        0,
        "{}",
        reg.log()
    );
    assert_eq!(reg.count("\"PUT /v2/corrupt/manifests/"), 0);
    let head = reqwest::blocking::get(format!("http://{}/v2/corrupt/blobs/sha256:{hex}", reg.host))
        .unwrap();
    assert_eq!(head.status().as_u16(), 404);
}

#[test]
fn login_stores_credentials_that_push_then_uses() {
    let reg = Registry::start(Mode::Basic);
    let w = Work::setup();
    w.build("out/hello");
    let home = w.path("home");
    fs::create_dir(&home).unwrap();
    let o = w
        .cmd()
        .env("HOME", &home)
        .args(["login", &reg.host, "-u", "tester", "--password-stdin"])
        .write_stdin("s3cret\n")
        .output()
        .unwrap();
    assert_ok(&o);
    let cfg = fs::read_to_string(home.join(".docker/config.json")).unwrap();
    assert!(
        cfg.contains(&reg.host) && !cfg.contains("s3cret"),
        "stored base64-encoded: {cfg}"
    );
    let o = w
        .cmd()
        .env("HOME", &home)
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", reg.host))
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!stderr(&o).contains("s3cret"));
}

fn login(w: &Work, home: &std::path::Path, host: &str, password: &str) -> std::process::Output {
    w.cmd()
        .env("HOME", home)
        .args(["login", host, "-u", "tester", "--password-stdin"])
        .write_stdin(format!("{password}\n"))
        .output()
        .unwrap()
}

#[test]
fn login_checks_the_password_and_never_loses_or_exposes_a_config() {
    use std::os::unix::fs::PermissionsExt;
    let reg = Registry::start(Mode::Basic);
    let w = Work::setup();
    let home = w.path("home");
    fs::create_dir(&home).unwrap();
    let cfg = home.join(".docker/config.json");
    // A wrong password is refused by the registry: nothing is stored.
    let o = login(&w, &home, &reg.host, "wrong");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("access denied"), "{}", stderr(&o));
    assert!(!cfg.exists());
    // The right one: stored, and the file is 0600.
    assert_ok(&login(&w, &home, &reg.host, "s3cret"));
    assert_eq!(
        fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A config that does not parse is never rewritten.
    fs::write(
        &cfg,
        "{ not json, \"auths\": {\"other\": {\"auth\": \"eDp5\"}}",
    )
    .unwrap();
    let before = fs::read(&cfg).unwrap();
    let o = login(&w, &home, &reg.host, "s3cret");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not rewrite"), "{}", stderr(&o));
    assert_eq!(fs::read(&cfg).unwrap(), before);
}

#[test]
fn credential_helpers_are_used_to_store_and_read() {
    use std::os::unix::fs::PermissionsExt;
    let reg = Registry::start(Mode::Basic);
    let w = Work::setup();
    w.build("out/hello");
    let home = w.path("home");
    fs::create_dir_all(home.join(".docker")).unwrap();
    let bin = w.path("bin");
    fs::create_dir(&bin).unwrap();
    let store = w.path("helper-store");
    // A credential helper as Docker defines them: `store` reads JSON, `get` reads the server.
    let helper = bin.join("docker-credential-test");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n store) cat > {s} ;;\n get) cat >/dev/null; sed 's/ServerURL/X/' {s} ;;\nesac\n",
            s = store.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = home.join(".docker/config.json");
    fs::write(&cfg, r#"{"credsStore": "test", "other": 1}"#).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = w
        .cmd()
        .env("HOME", &home)
        .env("PATH", &path)
        .args(["login", &reg.host, "-u", "tester", "--password-stdin"])
        .write_stdin("s3cret\n")
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        fs::read_to_string(&store)
            .unwrap()
            .contains("\"Secret\":\"s3cret\"")
    );
    assert_eq!(
        fs::read_to_string(&cfg).unwrap(),
        r#"{"credsStore": "test", "other": 1}"#,
        "the config is left alone"
    );
    let o = w
        .cmd()
        .env("HOME", &home)
        .env("PATH", &path)
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", reg.host))
        .output()
        .unwrap();
    assert_ok(&o);
}

#[test]
fn a_ca_in_docker_certs_d_is_trusted() {
    let reg = Registry::start(Mode::Tls);
    let w = Work::setup();
    w.build("out/hello");
    let certs_d = w.path("certs.d");
    fs::create_dir_all(certs_d.join(&reg.host)).unwrap();
    fs::copy(
        reg.dir.path().join("ca.crt"),
        certs_d.join(&reg.host).join("ca.crt"),
    )
    .unwrap();
    let o = w
        .cmd()
        .env("IMGBUILD_CERTS_D", &certs_d)
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", reg.host))
        .output()
        .unwrap();
    assert_ok(&o);
}

#[test]
fn bearer_tokens_from_a_token_service_push_and_pull() {
    let tokens_dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(tokens_dir.path());
    let reg = Registry::start_with_auth(&format!(
        "auth: {{token: {{realm: \"{}\", service: test-registry, issuer: imgbuild-test, rootcertbundle: {}}}}}\n",
        tokens.realm,
        p(tokens_dir.path(), "token.crt")
    ));
    let w = Work::setup();
    let dest = format!("{}/team/hello:1", reg.host);
    let o = w
        .cmd()
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/hello"))
        .args(["--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();
    assert!(
        tokens
            .scopes
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "repository:team/hello:pull,push"),
        "{:?}",
        tokens.scopes.lock().unwrap()
    );
    // Pull it back as a base, with a fresh cache: tokens for pull.
    fs::write(
        w.path("recipes/child.toml"),
        format!("[image]\nname = \"child\"\nbase = \"{dest}\"\n"),
    )
    .unwrap();
    let m = w.build_metadata(
        w.cmd_with_cache(&w.path("c2")),
        &w.path("recipes/child.toml"),
        "out/child",
    );
    assert_eq!(m["base_layers"].as_array().unwrap().len(), 6);
    assert!(!digest.is_empty());
}

#[test]
fn an_unknown_ca_is_named_in_a_one_line_error() {
    let tls = Registry::start(Mode::Tls);
    let w = Work::setup();
    w.build("out/hello");
    let o = w
        .cmd()
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", tls.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: pushing to") && last.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_multi_platform_base_is_resolved_through_its_index() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    let hello = w.path("out/hello");
    w.build("out/hello");
    // Wrap hello's manifest in an image index for linux/amd64 and tag it `multi`.
    let idx: Value = serde_json::from_slice(&fs::read(hello.join("index.json")).unwrap()).unwrap();
    let m = &idx["manifests"][0];
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let hex = {
        use sha2::Digest as _;
        format!("{:x}", sha2::Sha256::digest(&bytes))
    };
    fs::write(hello.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let mut top = idx.clone();
    top["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }]);
    fs::write(hello.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    skopeo(&[
        "copy".into(),
        "--all".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:multi", hello.display()),
        format!("docker://{}/multi:1", reg.host),
    ]);

    for (platform, ok) in [("linux/amd64", true), ("linux/arm64", false)] {
        let recipe = format!(
            "[image]\nname = \"child\"\nbase = \"{}/multi:1\"\nplatform = \"{platform}\"\n",
            reg.host
        );
        fs::write(w.path("recipes/child.toml"), recipe).unwrap();
        let meta = w.path("child.json");
        let o = w
            .cmd_with_cache(&w.path("c2"))
            .arg("build")
            .arg(w.path("recipes/child.toml"))
            .arg("--out")
            .arg(w.path("out/child"))
            .arg("--metadata-file")
            .arg(&meta)
            .output()
            .unwrap();
        if ok {
            assert_ok(&o);
            let meta: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
            assert_eq!(meta["base_layers"].as_array().unwrap().len(), 6);
        } else {
            assert_eq!(o.status.code(), Some(1));
            assert!(
                stderr(&o).contains("has no image for linux/arm64"),
                "{}",
                stderr(&o)
            );
        }
    }
}
