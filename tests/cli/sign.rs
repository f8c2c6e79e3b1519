//! Sigstore signatures, checked by other implementations:
//! - skopeo as Debian ships it. Debian 12's skopeo, podman and buildah are built with sigstore
//!   disabled ("Debian-local change: sigstore disabled", for signing and verifying alike), so
//!   these tests run Debian 13's skopeo, which has it (scripts/deps unpacks it into
//!   target/debian-skopeo): with a `policy.json` requiring `sigstoreSigned` by imgbuild's key it
//!   copies what imgbuild pushed and refuses it once the signature or the manifest is tampered
//!   with; `skopeo copy --sign-by-sigstore-private-key` signs the bases imgbuild's `base_key`
//!   check accepts;
//! - sigstore-rs, the sigstore project's Rust client (tests/support/sigstore-check, built by
//!   scripts/deps): it verifies what imgbuild pushes the way `cosign verify --key` does and
//!   signs bases as `cosign sign --key` does, with a key `imgbuild key generate` wrote;
//! - openssl, which verifies every signature's bytes with the public key;
//! - a Python implementation of the cosign key envelope (tests/support/cosign_key.py:
//!   hashlib scrypt, PyNaCl, pyca/cryptography), which opens imgbuild's keys and makes keys
//!   imgbuild and skopeo open.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use serde_json::{Value, json};

use crate::servers::{Mode, Registry, p};
use crate::{Work, assert_ok, repo, stderr, stdout, tool};

const PASSWORD: &str = "correct horse battery staple";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `imgbuild key generate --out DIR` (password from the environment).
fn generate(w: &Work, dir: &str) {
    let o = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", PASSWORD)
        .args(["key", "generate", "--out"])
        .arg(w.path(dir))
        .output()
        .unwrap();
    assert_ok(&o);
}

/// sigstore-rs's cosign client: `verify PUB REF` / `sign KEY REF` (password in
/// COSIGN_PASSWORD) against a plain-HTTP registry.
fn sigstore_check(args: &[&str], password: Option<&str>) -> std::process::Output {
    let bin = repo().join("target/sigstore-check/debug/sigstore-check");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/deps (it builds it)",
        bin.display()
    );
    let mut c = std::process::Command::new(bin);
    c.args(args);
    if let Some(pw) = password {
        c.env("COSIGN_PASSWORD", pw);
    }
    c.output().unwrap()
}

/// Debian 13's skopeo (sigstore enabled), unpacked by scripts/deps.
pub(crate) fn debian_skopeo() -> std::process::Command {
    let bin = repo().join("target/debian-skopeo/skopeo");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/deps (it fetches it)",
        bin.display()
    );
    std::process::Command::new(bin)
}

/// Trust files for skopeo: a `policy.json` that requires, for `host/repo`, a sigstore signature
/// by `public` naming the reference (containers/image's `matchRepoDigestOrExact`) and accepts
/// anything else; a `registries.d` that reads and writes sigstore attachments. Returns the
/// global options that select them.
pub(crate) fn trust(w: &Work, name: &str, host: &str, repo: &str, public: &str) -> Vec<String> {
    let dir = w.path(name);
    fs::create_dir_all(dir.join("registries.d")).unwrap();
    let policy = json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {format!("{host}/{repo}"): [{
            "type": "sigstoreSigned",
            "keyPath": public,
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }]}},
    });
    fs::write(dir.join("policy.json"), policy.to_string()).unwrap();
    fs::write(
        dir.join("registries.d/sigstore.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    )
    .unwrap();
    vec![
        "--policy".into(),
        dir.join("policy.json").display().to_string(),
        "--registries.d".into(),
        dir.join("registries.d").display().to_string(),
    ]
}

/// `skopeo copy` of `src` to `dest` under the trust files `opts` (plain-HTTP registry).
pub(crate) fn skopeo_copy(
    opts: &[String],
    extra: &[&str],
    src: &str,
    dest: &str,
) -> std::process::Output {
    debian_skopeo()
        .args(opts)
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(extra)
        .args([src, dest])
        .output()
        .unwrap()
}

/// The Python implementation of the key format.
fn py(args: &[&str]) -> String {
    let script = repo().join("tests/support/cosign_key.py");
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    tool("/usr/bin/python3", &all)
}

/// openssl's verdict on `sig` (base64 DER) over `payload` with the PEM public key `public`.
fn openssl_verifies(w: &Work, public: &str, payload: &[u8], sig: &str) -> bool {
    let dir = tempfile::tempdir_in(w.dir.path()).unwrap();
    fs::write(dir.path().join("payload"), payload).unwrap();
    fs::write(dir.path().join("sig"), B64.decode(sig.trim()).unwrap()).unwrap();
    std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", public, "-signature"])
        .arg(dir.path().join("sig"))
        .arg(dir.path().join("payload"))
        .output()
        .unwrap()
        .status
        .success()
}

/// A path as a `&'static str` (for argument lists).
fn leak(path: std::path::PathBuf) -> &'static str {
    Box::leak(
        path.into_os_string()
            .into_string()
            .unwrap()
            .into_boxed_str(),
    )
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn get(host: &str, path: &str) -> Vec<u8> {
    let resp = http()
        .get(format!("http://{host}/v2/{path}"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.bytes().unwrap().to_vec()
}

fn put_manifest(host: &str, repo: &str, reference: &str, body: &Value) {
    let resp = http()
        .put(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().unwrap());
}

fn upload_blob(host: &str, repo: &str, bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let resp = http()
        .post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{host}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = http()
        .put(format!("{loc}{sep}digest={digest}"))
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    digest
}

/// The signature attachment of `digest` in `repo`: the manifest, and each layer's payload and
/// signature.
fn attachment(host: &str, repo: &str, digest: &str) -> (Value, Vec<(Vec<u8>, String)>) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let m: Value =
        serde_json::from_slice(&get(host, &format!("{repo}/manifests/sha256-{hex}.sig"))).unwrap();
    let sigs = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let payload = get(
                host,
                &format!("{repo}/blobs/{}", l["digest"].as_str().unwrap()),
            );
            let sig = l["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap()
                .to_string();
            (payload, sig)
        })
        .collect();
    (m, sigs)
}

/// Replaces each signature payload of `digest` in `repo` with one naming another reference
/// (`from` -> `to`), the signatures kept; returns the attachment as it was.
fn forge_payloads(host: &str, repo: &str, digest: &str, from: &str, to: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let (original, sigs) = attachment(host, repo, digest);
    let mut forged = original.clone();
    for (i, (payload, _)) in sigs.iter().enumerate() {
        let changed = String::from_utf8(payload.clone())
            .unwrap()
            .replace(from, to);
        forged["layers"][i]["digest"] = json!(upload_blob(host, repo, changed.as_bytes()));
        forged["layers"][i]["size"] = json!(changed.len());
    }
    put_manifest(host, repo, &format!("sha256-{hex}.sig"), &forged);
    original
}

/// Moves tag `1` of `repo` to a changed manifest (one more annotation), which no signature
/// names.
fn move_tag_to_a_changed_manifest(host: &str, repo: &str) {
    let mut manifest: Value =
        serde_json::from_slice(&get(host, &format!("{repo}/manifests/1"))).unwrap();
    manifest["annotations"] = json!({"tampered": "yes"});
    put_manifest(host, repo, "1", &manifest);
}

/// `imgbuild build` of the example pushed to `dest` and signed with `keys/imgbuild.key`.
fn signed_build(w: &Work, dest: &str, password: &str) -> std::process::Output {
    w.cmd()
        .env("IMGBUILD_KEY_PASSWORD", password)
        .arg("build")
        .arg(w.recipe())
        .args(["--out", p(w.dir.path(), "out/hello"), "--push", dest])
        .arg("--sign-key")
        .arg(w.path("keys/imgbuild.key"))
        .output()
        .unwrap()
}

#[test]
fn key_generate_writes_a_cosign_key_pair_that_another_implementation_opens() {
    let w = Work::setup();
    generate(&w, "keys");
    let key = w.path("keys/imgbuild.key");
    let private = fs::read_to_string(&key).unwrap();
    assert!(private.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n"));
    assert!(!private.contains(PASSWORD));
    let mode = fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is for its owner only");
    let public = leak(w.path("keys/imgbuild.pub"));
    let text = tool(
        "openssl",
        &["pkey", "-pubin", "-in", public, "-text", "-noout"],
    );
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );

    // Python opens it with the password and signs; openssl verifies with the public half.
    fs::write(w.path("payload"), b"{\"any\":\"bytes\"}").unwrap();
    let sig = py(&[
        "sign",
        key.to_str().unwrap(),
        PASSWORD,
        p(w.dir.path(), "payload"),
    ]);
    assert!(openssl_verifies(&w, public, b"{\"any\":\"bytes\"}", &sig));

    let again = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", PASSWORD)
        .args(["key", "generate", "--out"])
        .arg(w.path("keys"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("does not overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(fs::read_to_string(&key).unwrap(), private);

    let no_password = w
        .cmd()
        .env_remove("IMGBUILD_KEY_PASSWORD")
        .args(["key", "generate", "--out"])
        .arg(w.path("other"))
        .output()
        .unwrap();
    assert_eq!(no_password.status.code(), Some(2));
    assert!(
        stderr(&no_password).contains("IMGBUILD_KEY_PASSWORD"),
        "{}",
        stderr(&no_password)
    );
}

#[test]
fn a_signed_push_stores_sigstore_signatures_of_the_image_and_its_sbom() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    generate(&w, "keys");
    let dest = format!("{}/signed:1", reg.host);
    let push = |password: &str, key: &str| {
        w.cmd()
            .env("IMGBUILD_KEY_PASSWORD", password)
            .args([
                "push",
                p(w.dir.path(), "out/hello"),
                &dest,
                "--sign-key",
                key,
            ])
            .output()
            .unwrap()
    };

    // A wrong password fails before anything is built or pushed (exit 2).
    let wrong = signed_build(&w, &dest, "nope");
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("password"), "{}", stderr(&wrong));
    assert!(!w.path("out/hello").exists(), "nothing built");

    let o = signed_build(&w, &dest, PASSWORD);
    assert_ok(&o);
    assert!(!stderr(&o).contains(PASSWORD));
    let digest = stdout(&o).trim().to_string();
    let public = leak(w.path("keys/imgbuild.pub"));

    // The attachment, as containers/image reads it: an OCI manifest tagged sha256-HEX.sig whose
    // layers are simple-signing payloads with the signature annotation, and a config listing
    // them as diff_ids.
    let (m, sigs) = attachment(&reg.host, "signed", &digest);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let config: Value = serde_json::from_slice(&get(
        &reg.host,
        &format!("signed/blobs/{}", m["config"]["digest"].as_str().unwrap()),
    ))
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([m["layers"][0]["digest"]])
    );
    assert_eq!(sigs.len(), 1);
    let (payload, sig) = &sigs[0];
    let claim: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(
        claim["critical"]["type"],
        "cosign container image signature"
    );
    assert_eq!(
        claim["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert_eq!(
        claim["critical"]["identity"]["docker-reference"],
        dest.as_str()
    );
    assert!(
        openssl_verifies(&w, public, payload, sig),
        "openssl rejects the signature"
    );

    // The SBOM referrer is signed too, under the repository's name (it has no tag).
    let hex = digest.strip_prefix("sha256:").unwrap();
    let referrers: Value =
        serde_json::from_slice(&get(&reg.host, &format!("signed/manifests/sha256-{hex}"))).unwrap();
    let sbom = referrers["manifests"][0]["digest"].as_str().unwrap();
    let (_, sbom_sigs) = attachment(&reg.host, "signed", sbom);
    let claim: Value = serde_json::from_slice(&sbom_sigs[0].0).unwrap();
    assert_eq!(claim["critical"]["image"]["docker-manifest-digest"], sbom);
    assert_eq!(
        claim["critical"]["identity"]["docker-reference"],
        format!("{}/signed", reg.host)
    );
    assert!(openssl_verifies(
        &w,
        public,
        &sbom_sigs[0].0,
        &sbom_sigs[0].1
    ));

    // sigstore-rs verifies it as `cosign verify --key` does; with another key it does not.
    let verified = sigstore_check(&["verify", public, &dest], None);
    assert_ok(&verified);
    generate(&w, "other");
    let other = sigstore_check(&["verify", leak(w.path("other/imgbuild.pub")), &dest], None);
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));

    // Pushing again with the same key adds nothing: signatures are deterministic.
    let before = get(&reg.host, &format!("signed/manifests/sha256-{hex}.sig"));
    assert_ok(&push(PASSWORD, leak(w.path("keys/imgbuild.key"))));
    assert_eq!(
        before,
        get(&reg.host, &format!("signed/manifests/sha256-{hex}.sig"))
    );

    // A key made by the other implementation signs too; the first signature stays.
    fs::create_dir_all(w.path("py")).unwrap();
    py(&[
        "make",
        leak(w.path("py/cosign.key")),
        leak(w.path("py/cosign.pub")),
        "py-pass",
    ]);
    assert_ok(&push("py-pass", leak(w.path("py/cosign.key"))));
    let (_, sigs) = attachment(&reg.host, "signed", &digest);
    assert_eq!(sigs.len(), 2, "another signer's signature is kept");
    assert!(openssl_verifies(&w, public, &sigs[0].0, &sigs[0].1));
    assert!(openssl_verifies(
        &w,
        leak(w.path("py/cosign.pub")),
        &sigs[1].0,
        &sigs[1].1
    ));
    assert!(!openssl_verifies(&w, public, &sigs[1].0, &sigs[1].1));

    // Tampered signature: each payload swapped for one naming another tag (signatures kept):
    // sigstore-rs refuses the image.
    let sig_tag = format!("sha256-{hex}.sig");
    let original = forge_payloads(&reg.host, "signed", &digest, "/signed:1", "/signed:2");
    let refused = sigstore_check(&["verify", public, &dest], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    put_manifest(&reg.host, "signed", &sig_tag, &original);
    assert_ok(&sigstore_check(&["verify", public, &dest], None));

    // Tampered manifest: the tag moved to a changed manifest, which no signature names.
    move_tag_to_a_changed_manifest(&reg.host, "signed");
    let refused = sigstore_check(&["verify", public, &dest], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
}

#[test]
fn debian_skopeo_enforces_imgbuilds_signatures_and_refuses_tampered_ones() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    generate(&w, "keys");
    generate(&w, "other");
    let public = w.path("keys/imgbuild.pub").display().to_string();
    let dest = format!("{}/enforced:1", reg.host);
    let o = signed_build(&w, &dest, PASSWORD);
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();

    let ours = trust(&w, "trust", &reg.host, "enforced", &public);
    let copy = |opts: &[String], to: &str| {
        let layout = format!("oci:{}:1", w.path(to).display());
        // The policy is checked on the source; an OCI layout cannot store the signatures.
        skopeo_copy(
            opts,
            &["--remove-signatures"],
            &format!("docker://{dest}"),
            &layout,
        )
    };
    let accepted = copy(&ours, "copied");
    assert_ok(&accepted);
    // What skopeo copied is what imgbuild pushed.
    let index: Value =
        serde_json::from_slice(&fs::read(w.path("copied/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());

    // Another key in the policy: rejected.
    let theirs = trust(
        &w,
        "trust-other",
        &reg.host,
        "enforced",
        &w.path("other/imgbuild.pub").display().to_string(),
    );
    let refused = copy(&theirs, "refused-key");
    assert!(!refused.status.success(), "accepted with another key");
    assert!(
        stderr(&refused).contains("rejected"),
        "{}",
        stderr(&refused)
    );

    // Tampered signature: the payload swapped for one naming another tag, signature kept.
    let sig_tag = format!("sha256-{hex}.sig");
    let (_, sigs) = attachment(&reg.host, "enforced", &digest);
    let original = forge_payloads(&reg.host, "enforced", &digest, "/enforced:1", "/enforced:2");
    let refused = copy(&ours, "refused-sig");
    assert!(!refused.status.success(), "accepted a forged payload");
    assert!(
        stderr(&refused).contains("rejected"),
        "{}",
        stderr(&refused)
    );
    // The signature's bytes altered (one byte of the DER flipped): rejected too.
    let mut bytes = B64.decode(sigs[0].1.trim()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let mut flipped = original.clone();
    flipped["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] =
        json!(B64.encode(&bytes));
    put_manifest(&reg.host, "enforced", &sig_tag, &flipped);
    let refused = copy(&ours, "refused-bytes");
    assert!(!refused.status.success(), "accepted a corrupted signature");
    put_manifest(&reg.host, "enforced", &sig_tag, &original);
    assert_ok(&copy(&ours, "accepted-again"));

    // Tampered manifest: the tag moved to a changed manifest, which no signature names.
    move_tag_to_a_changed_manifest(&reg.host, "enforced");
    let refused = copy(&ours, "refused-manifest");
    assert!(!refused.status.success(), "accepted a changed manifest");
    assert!(
        stderr(&refused).contains("rejected"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn base_key_accepts_a_base_signed_elsewhere_and_refuses_unsigned_foreign_or_altered_ones() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    w.build("out/hello");
    fs::create_dir_all(w.path("recipes/keys")).unwrap();
    let key = leak(w.path("recipes/keys/base.key"));
    py(&[
        "make",
        key,
        leak(w.path("recipes/keys/base.pub")),
        "py-pass",
    ]);
    generate(&w, "other");
    let layout = format!("oci:{}:latest", w.path("out/hello").display());
    // `base` and `altered` signed by skopeo (Debian 13's, sigstore enabled) with a key the
    // Python implementation made; the others pushed unsigned.
    let opts = trust(&w, "trust", &reg.host, "base", key);
    fs::write(w.path("pass"), "py-pass").unwrap();
    for name in ["base", "unsigned", "altered", "cosigned"] {
        let sign: &[&str] = if name == "base" || name == "altered" {
            &[
                "--sign-by-sigstore-private-key",
                key,
                "--sign-passphrase-file",
                leak(w.path("pass")),
            ]
        } else {
            &[]
        };
        let o = skopeo_copy(
            &opts,
            sign,
            &layout,
            &format!("docker://{}/{name}:1", reg.host),
        );
        assert_ok(&o);
    }
    let inspect: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/base:1", reg.host),
        ],
    ))
    .unwrap();
    let digest = inspect["Digest"].as_str().unwrap().to_string();
    let (_, sigs) = attachment(&reg.host, "base", &digest);
    let claim: Value = serde_json::from_slice(&sigs[0].0).unwrap();
    assert!(
        claim["optional"]["creator"]
            .as_str()
            .unwrap_or("")
            .contains("containers/image"),
        "{claim}"
    );
    // `altered`: its payload swapped for one naming another tag (signature kept).
    forge_payloads(&reg.host, "altered", &digest, "altered:1", "altered:2");

    let child = |base: &str, key: &str| {
        let recipe = w.path("recipes/child.toml");
        fs::write(
            &recipe,
            format!(
                "[image]\nname = \"child\"\nbase = \"{}/{base}\"\nbase_key = \"{key}\"\n\n[env]\nCHILD = \"1\"\n",
                reg.host
            ),
        )
        .unwrap();
        w.cmd()
            .arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(w.path("out/child"))
            .output()
            .unwrap()
    };
    assert_ok(&child("base:1", "keys/base.pub"));
    // A base signed by sigstore-rs as `cosign sign --key` does, with a key imgbuild made.
    generate(&w, "recipes/ours");
    let o = sigstore_check(
        &[
            "sign",
            leak(w.path("recipes/ours/imgbuild.key")),
            &format!("{}/cosigned:1", reg.host),
        ],
        Some(PASSWORD),
    );
    assert_ok(&o);
    assert_ok(&child("cosigned:1", "ours/imgbuild.pub"));
    let wrong = child("cosigned:1", "keys/base.pub");
    assert_eq!(wrong.status.code(), Some(1), "{}", stderr(&wrong));

    let unsigned = child("unsigned:1", "keys/base.pub");
    assert_eq!(unsigned.status.code(), Some(1), "{}", stderr(&unsigned));
    assert!(
        stderr(&unsigned).contains("has no sigstore signature"),
        "{}",
        stderr(&unsigned)
    );

    let foreign = child(
        "base:1",
        &w.path("other/imgbuild.pub").display().to_string(),
    );
    assert_eq!(foreign.status.code(), Some(1), "{}", stderr(&foreign));
    assert!(
        stderr(&foreign).contains("does not verify"),
        "{}",
        stderr(&foreign)
    );

    let altered = child("altered:1", "keys/base.pub");
    assert_eq!(altered.status.code(), Some(1), "{}", stderr(&altered));
    assert!(
        stderr(&altered).contains("does not verify"),
        "{}",
        stderr(&altered)
    );

    // Pulled by another tag than the signature names: refused (matchRepoDigestOrExact).
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/base:1", reg.host),
            &format!("docker://{}/base:2", reg.host),
        ],
    );
    let other_tag = child("base:2", "keys/base.pub");
    assert_eq!(other_tag.status.code(), Some(1), "{}", stderr(&other_tag));
    assert!(
        stderr(&other_tag).contains("as `"),
        "{}",
        stderr(&other_tag)
    );

    // A key for a base that is not in a registry, or a file that is not a public key: exit 2
    // at the field.
    let recipe = w.path("recipes/child.toml");
    fs::write(
        &recipe,
        "[image]\nname = \"child\"\nbase_key = \"keys/base.pub\"\n",
    )
    .unwrap();
    let o = w.cmd().arg("check").arg(&recipe).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("child.toml:3") && stderr(&o).contains("base_key"),
        "{}",
        stderr(&o)
    );
    let bad = child("base:1", "keys/base.key");
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("not `PUBLIC KEY`"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn the_recipes_sign_key_signs_what_build_and_rebuild_push() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    generate(&w, "recipes/keys");
    let text = fs::read_to_string(w.recipe()).unwrap();
    fs::write(
        w.recipe(),
        text.replace(
            "[target.oci]\n",
            "[target.oci]\nsign_key = \"keys/imgbuild.key\"\n",
        ),
    )
    .unwrap();
    assert!(
        fs::read_to_string(w.recipe()).unwrap().contains("sign_key"),
        "the example has a [target.oci] table"
    );
    let public = leak(w.path("recipes/keys/imgbuild.pub"));
    // Without the password, a push fails before building (exit 2); a build without --push
    // needs no key.
    let dest = format!("{}/recipe-signed:1", reg.host);
    let o = w
        .cmd()
        .env_remove("IMGBUILD_KEY_PASSWORD")
        .arg("build")
        .arg(w.recipe())
        .args(["--out", p(w.dir.path(), "out/hello"), "--push", &dest])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_ok(&w.build_output("out/hello"));

    let o = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", PASSWORD)
        .arg("build")
        .arg(w.recipe())
        .args(["--out", p(w.dir.path(), "out/hello"), "--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();
    let (_, sigs) = attachment(&reg.host, "recipe-signed", &digest);
    assert!(openssl_verifies(&w, public, &sigs[0].0, &sigs[0].1));

    // rebuild to another repository: pushed and signed there, under that name.
    let nightly = format!("{}/nightly:1", reg.host);
    let o = w
        .cmd()
        .env("IMGBUILD_KEY_PASSWORD", PASSWORD)
        .arg("rebuild")
        .arg(w.recipe())
        .args(["--push", &nightly, "--out", p(w.dir.path(), "out/hello")])
        .output()
        .unwrap();
    assert_ok(&o);
    let (_, sigs) = attachment(&reg.host, "nightly", &digest);
    let claim: Value = serde_json::from_slice(&sigs[0].0).unwrap();
    assert_eq!(
        claim["critical"]["identity"]["docker-reference"],
        nightly.as_str()
    );
    assert!(openssl_verifies(&w, public, &sigs[0].0, &sigs[0].1));
}
