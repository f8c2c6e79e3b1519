//! Every reader of outside input survives arbitrary bytes and structured mutations of real
//! inputs: recipe TOML, Dockerfiles, deb822 control and relations, InRelease, layer tars,
//! .debs, OCI index/manifest/config JSON, Proxmox answers, OpenPGP keys and signatures. No panic, and each case in bounded
//! time (cargo-fuzz needs a nightly toolchain; these run in `cargo test`).

use std::time::{Duration, Instant};

use proptest::prelude::*;

/// A real input with random byte edits: overwrite, insert, delete.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..24).prop_map(move |edits| {
        let mut v = seed.to_vec();
        for (pos, byte, op) in edits {
            let i = if v.is_empty() { 0 } else { pos % v.len() };
            match op {
                0 if !v.is_empty() => v[i] = byte,
                1 => v.insert(i, byte),
                _ if !v.is_empty() => {
                    v.remove(i);
                }
                _ => {}
            }
        }
        v
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..2048)
}

/// Runs `f`, failing the case if it takes longer than `limit`.
fn bounded(limit: Duration, f: impl FnOnce()) -> Result<(), TestCaseError> {
    let t = Instant::now();
    f();
    prop_assert!(t.elapsed() < limit, "took {:?}", t.elapsed());
    Ok(())
}

const RECIPE: &[u8] = include_bytes!("../recipes/coderall.toml");
const DOCKERFILE: &[u8] = include_bytes!("../fixtures/import/coderall.Dockerfile");
const CONTROL: &[u8] = b"Package: fixture-hello\nVersion: 2:1.0-1\nArchitecture: amd64\n\
Depends: libc6 (>= 2.36), fixture-lib (>= 1.1) | fixture-provider, perl:any\n\
Pre-Depends: dpkg (>= 1.17)\nProvides: hello-virtual (= 1.0)\nDescription: x\n continued\n .\n\n\
Package: b\nVersion: 1\n";
const INRELEASE: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\n\
Suite: stable\nSHA256:\n 0123456789012345678901234567890123456789012345678901234567890123 1234 main/binary-amd64/Packages.xz\n\
-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n";
const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"annotations":{"a":"b"}}]}"#;
const INDEX: &[u8] = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]},"history":[{"created_by":"x"}]}"#;
const PROXMOX: &[u8] =
    br#"{"data":"UPID:pve:00001234:00000001:69400001:qmcreate:9000:root@pam!imgbuild:"}"#;

fn a_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/a", &b"x"[..]), ("usr/bin/b", b"yy")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn recipes(raw in prop_oneof![bytes(), mutated(RECIPE)]) {
        bounded(Duration::from_secs(5), || {
            let text = String::from_utf8_lossy(&raw).into_owned();
            let _ = crate::recipe::parse("fuzz.toml".as_ref(), text, &[]);
        })?;
    }

    #[test]
    fn openpgp_keys_and_detached_signatures(key in bytes(), sig in bytes(), armored in any::<bool>()) {
        bounded(Duration::from_secs(5), || {
            let mut sig = sig;
            if armored {
                let mut a = b"-----BEGIN PGP SIGNATURE-----\n\n".to_vec();
                a.extend_from_slice(&sig);
                a.extend_from_slice(b"\n-----END PGP SIGNATURE-----\n");
                sig = a;
            }
            let _ = crate::openpgp::keyring(&key);
            let _ = crate::openpgp::verify_detached(&[], None, &sig, &b"data"[..]);
        })?;
    }

    #[test]
    fn dockerfiles(raw in prop_oneof![bytes(), mutated(DOCKERFILE)]) {
        bounded(Duration::from_secs(5), || {
            let text = String::from_utf8_lossy(&raw).into_owned();
            let _ = crate::import::import(&text, "Dockerfile", None);
        })?;
    }

    #[test]
    fn control_files_and_relations(raw in prop_oneof![bytes(), mutated(CONTROL)]) {
        bounded(Duration::from_secs(2), || {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Ok(ps) = crate::apt::control::parse(&text) {
                for p in ps {
                    for f in ["Depends", "Pre-Depends", "Provides", "Conflicts"] {
                        if let Some(v) = p.get(f) {
                            let _ = crate::apt::relation::parse_relations(v);
                        }
                    }
                }
            }
            for line in text.lines() {
                let _ = crate::apt::relation::parse_dep(line);
                let _ = line.parse::<crate::apt::relation::Version>();
            }
        })?;
    }

    #[test]
    fn inrelease(raw in prop_oneof![bytes(), mutated(INRELEASE)]) {
        bounded(Duration::from_secs(2), || {
            let text = String::from_utf8_lossy(&raw).into_owned();
            let _ = crate::apt::control::cleartext_body(&text);
            let src = crate::apt::repo::Source {
                name: "fuzz".into(),
                uri: "http://127.0.0.1:9".into(),
                suite: "stable".into(),
                components: vec!["main".into()],
                keyring: Some(raw.clone()),
                key_origin: "fuzz".into(),
            };
            let _ = crate::apt::repo::verify_inrelease(&src, "http://127.0.0.1:9/InRelease", &text);
        })?;
    }

    #[test]
    fn layer_tars(raw in prop_oneof![bytes(), mutated(Box::leak(a_tar().into_boxed_slice()))]) {
        bounded(Duration::from_secs(5), || {
            let t = tempfile::tempdir().unwrap();
            let root = crate::rootfs::Root::open(t.path()).unwrap();
            let _ = crate::rootfs::apply(&root, &raw[..], 0);
            let _ = crate::layer::decompressed(&raw[..], crate::layer::MEDIA_TYPE_GZIP)
                .map(|mut r| std::io::copy(&mut r, &mut std::io::sink()));
            let _ = crate::layer::decompressed(&raw[..], crate::layer::MEDIA_TYPE_ZSTD)
                .map(|mut r| std::io::copy(&mut r, &mut std::io::sink()));
        })?;
    }

    #[test]
    fn debs(raw in prop_oneof![bytes(), mutated(b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\ncontrol.tar.xz  0           0     0     100644  0         `\n")]) {
        bounded(Duration::from_secs(5), || {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().join("x.deb");
            std::fs::write(&p, &raw).unwrap();
            let _ = crate::apt::deb::control(&p, "fuzz");
        })?;
    }

    #[test]
    fn oci_json(raw in prop_oneof![bytes(), mutated(MANIFEST), mutated(INDEX), mutated(CONFIG)]) {
        bounded(Duration::from_secs(2), || {
            let _ = serde_json::from_slice::<crate::oci::layout::Manifest>(&raw);
            if let Ok(i) = serde_json::from_slice::<crate::oci::layout::Index>(&raw) {
                let _ = i.for_platform("linux/amd64");
            }
            if let Ok(c) = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(&raw) {
                for d in c.rootfs().diff_ids() {
                    let _ = crate::digest::Digest::parse(d);
                }
            }
        })?;
    }

    #[test]
    fn proxmox_answers(raw in prop_oneof![bytes(), mutated(PROXMOX)]) {
        bounded(Duration::from_secs(2), || {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw) {
                let data = v.get("data").cloned().unwrap_or_default();
                let _ = crate::proxmox::api::upid(&data, "POST", "/x");
                let _ = crate::proxmox::api::upid(&v, "POST", "/x");
            }
        })?;
    }

    #[test]
    fn registry_references(s in ".{0,200}") {
        let _ = crate::registry::Reference::parse(&s);
        let _ = crate::http::has_userinfo(&s);
        let _ = crate::http::redact(&s);
    }
}
