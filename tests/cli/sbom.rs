//! The SPDX document written next to every layout (and pushed as a referrer of the image):
//! valid SPDX 2.3 by the SPDX project's own validator (`pyspdxtools`, which scripts/deps
//! installs in target/spdx-tools), listing every package dpkg says the image holds, with the
//! .deb sha256 and a package URL; downloads with their sha256.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::apt::{dpkg_list, fixture_repo, recipe, unpack};
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
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"tool-amd64.tar.gz"), "{names:?}");
    assert!(names.contains(&"compose-linux-x86_64"), "{names:?}");
}
