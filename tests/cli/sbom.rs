//! The SPDX document written next to every layout (and pushed as a referrer of the image):
//! valid against the SPDX 2.3 JSON schema (checked by Python's jsonschema) and by the SPDX
//! project's own validator (`pyspdxtools`, which scripts/deps installs in target/spdx-tools),
//! listing every package dpkg says the image holds, with the .deb sha256 and a package URL;
//! downloads with their sha256.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::apt_repo::{dpkg_list, fixture_repo, recipe, unpack};
use crate::{FileServer, Work, assert_ok, repo};

fn validate(doc: &Path) {
    let tool = repo().join("target/spdx-tools/bin/pyspdxtools");
    let o = std::process::Command::new(&tool)
        .arg("-i")
        .arg(doc)
        .args(["--version", "SPDX-2.3"])
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/deps installs it): {e}", tool.display()));
    assert_ok(&o);
}

/// The SPDX 2.3 JSON schema, as the `serde-spdx` crate (a dev-dependency, so cargo fetches
/// it from the crate registry) ships it.
fn spdx_schema() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_ok(&o);
    let meta: Value = serde_json::from_slice(&o.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "serde-spdx")
        .expect("serde-spdx in cargo metadata")["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    Path::new(&manifest)
        .parent()
        .unwrap()
        .join("schemas/spdx_2_3.json")
}

/// The schema's errors for `doc`, by Python's jsonschema (draft 2019-09).
fn schema_errors(doc: &Value) -> Vec<String> {
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(sys.stdin)
v = jsonschema.validators.validator_for(schema)(schema)
print(json.dumps([e.message for e in v.iter_errors(doc)]))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(spdx_schema())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn packages_len(doc: &Value) -> usize {
    doc["packages"].as_array().map_or(0, Vec::len)
}

fn read(doc: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(doc).unwrap()).unwrap()
}

#[test]
fn the_sbom_is_valid_spdx_and_lists_every_installed_package() {
    let fixture = fixture_repo();
    fixture.publish(None);
    let server = FileServer::start(fixture.root.path());
    let work = Work::setup();
    fixture
        .signer
        .export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--out")
        .arg(work.path("out/apt"))
        .output()
        .unwrap();
    assert_ok(&o);
    let manifest = crate::stdout(&o).trim().to_string();
    let doc_path = work.path("out/apt/sbom.spdx.json");
    validate(&doc_path);
    let doc = read(&doc_path);
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    // The SPDX 2.3 JSON schema accepts it, and would refuse a broken one; the types
    // serde-spdx generates from that schema read it.
    assert_eq!(schema_errors(&doc), Vec::<String>::new());
    let typed: serde_spdx::spdx::v_2_3::Spdx = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(typed.packages.map(|p| p.len()), Some(packages_len(&doc)));
    let mut broken = doc.clone();
    broken["packages"][1]["checksums"][0]["algorithm"] = "CRC99".into();
    broken.as_object_mut().unwrap().remove("creationInfo");
    assert_eq!(
        schema_errors(&broken).len(),
        2,
        "{:?}",
        schema_errors(&broken)
    );
    let packages = doc["packages"].as_array().unwrap();
    assert_eq!(packages[0]["versionInfo"], manifest.as_str());
    assert_eq!(packages[0]["primaryPackagePurpose"], "CONTAINER");

    // What dpkg says the image holds, exactly.
    let rootfs = unpack(&work, "out/apt");
    let installed: BTreeSet<String> = dpkg_list(&rootfs)
        .lines()
        .filter(|l| l.starts_with("ii "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            format!("{}={}", w[1], w[2])
        })
        .collect();
    let listed: BTreeSet<String> = packages
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
        .map(|p| {
            format!(
                "{}={}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, installed);
    assert!(installed.len() >= 4, "{installed:?}");
    let hello = packages
        .iter()
        .find(|p| p["name"] == "fixture-hello")
        .unwrap();
    assert_eq!(
        hello["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/fixture-hello@2%3A1.0-1?arch=amd64"
    );
    assert_eq!(hello["checksums"][0]["algorithm"], "SHA256");
    // Every package is contained in the image.
    let contained = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .count();
    assert_eq!(contained, packages.len() - 1);
}

#[test]
fn downloads_are_in_the_sbom_too() {
    let w = Work::setup();
    w.build("out/hello");
    let doc_path = w.path("out/hello/sbom.spdx.json");
    validate(&doc_path);
    let doc = read(&doc_path);
    assert_eq!(schema_errors(&doc), Vec::<String>::new());
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"tool-amd64.tar.gz"), "{names:?}");
    assert!(names.contains(&"compose-linux-x86_64"), "{names:?}");
}

#[test]
fn the_sbom_is_pushed_as_a_referrer_of_the_image() {
    let reg = crate::servers::Registry::start(crate::servers::Mode::Plain);
    let w = Work::setup();
    let dest = format!("{}/sbom/hello:1", reg.host);
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
    let image = crate::stdout(&o).trim().to_string();
    let hex = image.trim_start_matches("sha256:");
    let raw = |r: &str| -> Value {
        let out = crate::tool(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{}/sbom/hello{r}", reg.host),
            ],
        );
        serde_json::from_str(&out).unwrap()
    };
    // The referrers tag schema: the index tagged sha256-<hex> lists the SBOM.
    let index = raw(&format!(":sha256-{hex}"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["artifactType"], "application/spdx+json", "{index}");
    let artifact = raw(&format!("@{}", entry["digest"].as_str().unwrap()));
    assert_eq!(artifact["subject"]["digest"], image.as_str());
    assert_eq!(
        artifact["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let layer = &artifact["layers"][0];
    assert_eq!(layer["mediaType"], "application/spdx+json");
    // Its one blob is the document next to the layout, byte for byte.
    let url = format!(
        "http://{}/v2/sbom/hello/blobs/{}",
        reg.host,
        layer["digest"].as_str().unwrap()
    );
    let fetched = crate::tool(
        "python3",
        &[
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &url,
        ],
    );
    assert_eq!(
        fetched,
        std::fs::read_to_string(w.path("out/hello/sbom.spdx.json")).unwrap()
    );
}

/// Builds a one-file recipe on an OCI layout base whose only layer holds `status` as
/// `/var/lib/dpkg/status`.
fn build_on_status(w: &Work, name: &str, status: &[u8]) -> std::process::Output {
    use crate::hostile::{E, layout, tar};
    let base = w.path(&format!("base-{name}"));
    layout(
        &base,
        &[tar(&[
            E::Dir("var"),
            E::Dir("var/lib"),
            E::Dir("var/lib/dpkg"),
            E::File("var/lib/dpkg/status", status),
        ])],
    );
    let recipe = w.path(&format!("recipes/{name}.toml"));
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"{name}\"\nbase = \"oci:{}:1\"\n\n[[file]]\ndest = \"/etc/x\"\ncontent = \"x\"\n",
            base.display()
        ),
    )
    .unwrap();
    w.cmd()
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(w.path(&format!("out/{name}")))
        .output()
        .unwrap()
}

#[test]
fn multi_arch_packages_are_listed_once_each_and_an_unreadable_status_is_said() {
    let w = Work::setup();
    let status = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\nMulti-Arch: same\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\nMulti-Arch: same\n";
    crate::assert_ok(&build_on_status(&w, "ma", status));
    let doc: Value =
        serde_json::from_slice(&std::fs::read(w.path("out/ma/sbom.spdx.json")).unwrap()).unwrap();
    let libc: Vec<&Value> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "libc6")
        .collect();
    assert_eq!(libc.len(), 2, "one per architecture: {libc:?}");
    // Built again: the base's list comes from the cache (read once per base), the same.
    let sbom = std::fs::read(w.path("out/ma/sbom.spdx.json")).unwrap();
    crate::assert_ok(&build_on_status(&w, "ma", status));
    assert_eq!(
        std::fs::read(w.path("out/ma/sbom.spdx.json")).unwrap(),
        sbom
    );
    // A status that cannot be read: the build says so instead of listing nothing silently.
    let o = build_on_status(
        &w,
        "broken",
        b"Package: broken\n continuation without a field\n\x00\n",
    );
    crate::assert_ok(&o);
    assert!(
        crate::stderr(&o).contains("SBOM: the base image's /var/lib/dpkg/status cannot be read"),
        "{}",
        crate::stderr(&o)
    );
    // Not remembered as an empty list: said again.
    let o = build_on_status(
        &w,
        "broken",
        b"Package: broken\n continuation without a field\n\x00\n",
    );
    assert!(
        crate::stderr(&o).contains("SBOM: the base image's /var/lib/dpkg/status cannot be read"),
        "{}",
        crate::stderr(&o)
    );
}
