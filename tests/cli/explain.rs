//! `plan --explain` and the reasons in `--metadata-file`: why each step misses the cache, one
//! kind of change at a time, against the last build of the recipe in the workspace's cache.
//! (Package versions: `rebuild::rebuild_builds_and_pushes_only_what_changed`, whose report
//! carries the same reasons.)

use std::fs;

use serde_json::Value;

use crate::{Work, assert_ok, stdout};

/// `imgbuild plan --explain RECIPE`: each step's line and its `why:` lines, by step number.
fn explain(w: &Work, recipe: &std::path::Path, epoch: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut c = w.cmd();
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    let o = c.args(["plan", "--explain"]).arg(recipe).output().unwrap();
    assert_ok(&o);
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in stdout(&o).lines() {
        if let Some(why) = line.trim_start().strip_prefix("why: ") {
            steps
                .last_mut()
                .expect("a why line follows a step")
                .1
                .push(why.to_string());
        } else if line.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
            steps.push((line.to_string(), Vec::new()));
        }
    }
    steps
}

/// The step whose line contains `name`.
fn step<'a>(steps: &'a [(String, Vec<String>)], name: &str) -> &'a (String, Vec<String>) {
    steps
        .iter()
        .find(|(line, _)| line.contains(name))
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn plan_explain_names_the_input_that_changed() {
    let w = Work::setup();
    let r = w.recipe();

    // Before any build: every step was never built, in the plan and in the build's metadata.
    let steps = explain(&w, &r, None);
    assert!(steps.len() >= 6, "{steps:#?}");
    for (line, why) in &steps {
        assert!(line.contains("miss"), "{line}");
        assert_eq!(
            why,
            &["never built (no earlier build of this recipe in this cache)"],
            "{line}"
        );
    }
    let meta = w.build_metadata(w.cmd(), &r, "out/hello");
    for l in meta["layers"].as_array().unwrap() {
        assert_eq!(l["cache"], "miss");
        assert_eq!(l["why"][0]["kind"], "never-built", "{l}");
    }

    // Built: everything hits, nothing to explain.
    let steps = explain(&w, &r, None);
    assert!(
        steps
            .iter()
            .all(|(l, why)| l.contains("hit") && why.is_empty()),
        "{steps:#?}"
    );

    // A file's content: that step, named by its source path; the steps after it build on it.
    fs::write(
        w.path("recipes/files/greet.sh"),
        "#!/bin/sh\necho changed\n",
    )
    .unwrap();
    let steps = explain(&w, &r, None);
    let files = step(&steps, "files /etc/motd");
    assert_eq!(files.1.len(), 1, "{files:?}");
    let why = &files.1[0];
    assert!(
        why.starts_with("file ")
            && why.contains("files/greet.sh (/usr/local/bin/greet) sha256:")
            && why.contains(" -> sha256:"),
        "{why}"
    );
    let files_no: &str = files.0.split_whitespace().next().unwrap();
    let links = step(&steps, "symlinks /usr/bin/tool");
    assert_eq!(
        links.1,
        [format!(
            "builds on step {files_no} ({}), which changed",
            files.0.split("miss  ").nth(1).unwrap()
        )]
    );
    let users = step(&steps, "users docker");
    assert!(users.1.is_empty() && users.0.contains("hit"), "{users:?}");
    // The build's metadata carries the same reasons.
    let meta = w.build_metadata(w.cmd(), &r, "out/hello");
    let layer = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["step"].as_str().unwrap().starts_with("files "))
        .unwrap();
    assert_eq!(layer["why"][0]["kind"], "file");
    assert_eq!(layer["why"][0]["text"].as_str().unwrap(), why);
    let hit = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["step"].as_str().unwrap().starts_with("users "))
        .unwrap();
    assert_eq!(hit["why"], serde_json::json!([]));

    // A recipe field: the symlink's target.
    edit(
        &r,
        "target = \"/opt/tool/bin/tool\"",
        "target = \"/opt/tool/bin/other\"",
    );
    let steps = explain(&w, &r, None);
    let links = step(&steps, "symlinks /usr/bin/tool");
    assert_eq!(links.1.len(), 1, "{links:?}");
    assert!(
        links.1[0].starts_with("recipe field symlinks.links: ")
            && links.1[0].contains("/opt/tool/bin/tool")
            && links.1[0].contains("-> [[\"/usr/bin/tool\",\"/opt/tool/bin/other\"]]"),
        "{links:?}"
    );
    let services = step(&steps, "systemctl enable");
    assert!(services.1[0].starts_with("builds on step "), "{services:?}");
    edit(
        &r,
        "target = \"/opt/tool/bin/other\"",
        "target = \"/opt/tool/bin/tool\"",
    );

    // A download's pinned digest (the plan needs no download to say so).
    edit(
        &r,
        "sha256 = \"c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855\"",
        "sha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"",
    );
    let steps = explain(&w, &r, None);
    let download = step(&steps, "download ");
    assert_eq!(
        download.1,
        [format!(
            "download {}/compose-linux-x86_64 sha256:c212129d3606 -> sha256:000000000000",
            w.server.url
        )]
    );
    edit(
        &r,
        "sha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"",
        "sha256 = \"c212129d36064fe914d54dc970b6f4c4bd52fffc6157623422c751f454ca3855\"",
    );

    // SOURCE_DATE_EPOCH is under every step: the first says so, the rest build on it.
    let steps = explain(&w, &r, Some("86400"));
    assert!(
        steps[0].1[0].starts_with("SOURCE_DATE_EPOCH ") && steps[0].1[0].ends_with(" -> 86400"),
        "{steps:#?}"
    );
    assert!(steps[1].1[0].starts_with("builds on step 1 "), "{steps:#?}");

    // Nothing changed, but the layers are gone from the cache.
    fs::remove_dir_all(w.path("cache/blobs")).unwrap();
    let steps = explain(&w, &r, None);
    assert!(
        steps
            .iter()
            .all(|(_, why)| why == &["inputs unchanged, but the layer is no longer in the cache"]),
        "{steps:#?}"
    );
}

#[test]
fn plan_explain_names_a_changed_base_image() {
    let w = Work::setup();
    w.build("out/base");
    let child = w.path("recipes/child.toml");
    fs::write(
        &child,
        "[image]\nname = \"child\"\nbase = \"oci:../out/base:latest\"\n\n[[file]]\ndest = \"/etc/child\"\ncontent = \"child\\n\"\n",
    )
    .unwrap();
    let o = w
        .cmd()
        .arg("build")
        .arg(&child)
        .arg("--out")
        .arg(w.path("out/child"))
        .output()
        .unwrap();
    assert_ok(&o);
    let index: Value =
        serde_json::from_slice(&fs::read(w.path("out/base/index.json")).unwrap()).unwrap();
    let old = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // The base rebuilt with another motd: the child's step says which digest it moved from/to.
    edit(&w.recipe(), "hello from imgbuild", "hello again");
    let new = w.build("out/base");
    let steps = explain(&w, &child, None);
    assert_eq!(
        steps[0].1,
        [format!("base image {} -> {}", &old[..19], &new[..19])]
    );
}
