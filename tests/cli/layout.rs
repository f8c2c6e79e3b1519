//! The built layout, read back with skopeo, umoci and GNU tar.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use serde_json::Value;

use crate::{Work, tool};

/// `skopeo inspect --config oci:DIR:TAG`
pub fn config(w: &Work, out: &str, tag: &str) -> Value {
    let r = format!("oci:{}:{tag}", w.path(out).display());
    serde_json::from_str(&tool("skopeo", &["inspect", "--config", &r])).unwrap()
}

/// `umoci unpack` into a fresh bundle; returns the rootfs.
pub fn unpack(w: &Work, out: &str, tag: &str) -> PathBuf {
    let bundle = w.path(&format!("bundle-{}-{tag}", out.replace('/', "-")));
    let _ = fs::remove_dir_all(&bundle);
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", w.path(out).display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

pub fn unpack_file(w: &Work, out: &str, tag: &str, path: &str) -> String {
    fs::read_to_string(unpack(w, out, tag).join(path)).unwrap()
}

#[test]
fn skopeo_and_umoci_read_the_layout_and_it_matches_the_recipe() {
    let w = Work::setup();
    let digest = w.build("out/hello");

    // Both tags resolve, to the digest `build` printed.
    for tag in ["latest", "1.0"] {
        let r = format!("oci:{}:{tag}", w.path("out/hello").display());
        let v: Value = serde_json::from_str(&tool("skopeo", &["inspect", &r])).unwrap();
        assert_eq!(v["Digest"], digest.as_str());
        assert_eq!(v["Layers"].as_array().unwrap().len(), 6);
        assert_eq!(v["Architecture"], "amd64");
    }

    let cfg = config(&w, "out/hello", "latest");
    let c = &cfg["config"];
    assert_eq!(
        c["Env"],
        serde_json::json!([
            "LANG=en_US.UTF-8",
            "GOROOT=/usr/local/go",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin",
            "GOPATH=/home/eric/go"
        ])
    );
    assert_eq!(c["User"], "eric");
    assert_eq!(c["WorkingDir"], "/home/eric");
    assert_eq!(c["Cmd"], serde_json::json!(["/usr/local/bin/greet"]));
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "hello");
    assert_eq!(cfg["created"], "1970-01-01T00:00:00Z");
    assert_eq!(cfg["history"].as_array().unwrap().len(), 6);

    let root = unpack(&w, "out/hello", "latest");
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let mode = |p: &str| meta(p).permissions().mode() & 0o7777;
    let owner = |p: &str| (meta(p).uid(), meta(p).gid());

    // [[file]]
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hello from imgbuild\n"
    );
    assert_eq!(mode("etc/motd"), 0o644);
    assert_eq!(
        fs::read(root.join("usr/local/bin/greet")).unwrap(),
        fs::read(w.path("recipes/files/greet.sh")).unwrap()
    );
    assert_eq!(mode("usr/local/bin/greet"), 0o755);
    assert_eq!(mode("home/eric/.config/notes.txt"), 0o600);
    assert_eq!(owner("home/eric/.config/notes.txt"), (1000, 999));
    assert_eq!(
        owner("home/eric/.config"),
        (1000, 999),
        "parents created for an owned file belong to its owner"
    );
    // [[download]]
    assert_eq!(
        fs::read(root.join("usr/local/bin/docker-compose")).unwrap(),
        fs::read(crate::repo().join("fixtures/downloads/compose-linux-x86_64")).unwrap()
    );
    assert_eq!(mode("usr/local/bin/docker-compose"), 0o755);
    assert_eq!(
        fs::read_to_string(root.join("opt/tool/share/README")).unwrap(),
        "tool docs\n"
    );
    assert_eq!(mode("opt/tool/bin/tool"), 0o755);
    assert_eq!(
        fs::read_link(root.join("opt/tool/bin/README")).unwrap(),
        PathBuf::from("../share/README")
    );
    assert_eq!(
        meta("opt/tool/bin/tool-alias").ino(),
        meta("opt/tool/bin/tool").ino(),
        "hard link kept"
    );
    // [[symlink]]
    assert_eq!(
        fs::read_link(root.join("usr/bin/tool")).unwrap(),
        PathBuf::from("/opt/tool/bin/tool")
    );
    // [[user]], [[group]]
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd,
        "root:x:0:0:root:/root:/bin/sh\neric:x:1000:1000::/home/eric:/bin/bash\n"
    );
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    assert_eq!(group, "root:x:0:\ndocker:x:999:eric\neric:x:1000:\n");
    assert!(
        fs::read_to_string(root.join("etc/shadow"))
            .unwrap()
            .contains("eric:!:")
    );
    assert_eq!(mode("etc/shadow"), 0o640);
    assert_eq!(owner("home/eric"), (1000, 1000));
    // No login.defs in the image: what useradd's default umask (022) leaves.
    assert_eq!(mode("home/eric"), 0o755);
    assert_eq!(owner("home"), (0, 0));
    assert_eq!(
        fs::read_to_string(root.join("etc/sudoers.d/eric")).unwrap(),
        "eric ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert_eq!(mode("etc/sudoers.d/eric"), 0o440);
    // [services]
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/hello.service"))
            .unwrap(),
        PathBuf::from("/etc/systemd/system/hello.service")
    );
}

#[test]
fn layers_are_valid_sorted_gzip_tars_with_fixed_mtimes() {
    let w = Work::setup();
    w.build("out/hello");
    let manifest_digest = {
        let idx: Value =
            serde_json::from_slice(&fs::read(w.path("out/hello/index.json")).unwrap()).unwrap();
        idx["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string()
    };
    let m: Value = serde_json::from_slice(
        &fs::read(w.path(&format!("out/hello/blobs/sha256/{manifest_digest}"))).unwrap(),
    )
    .unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let blob = w.path(&format!(
            "out/hello/blobs/sha256/{}",
            l["digest"].as_str().unwrap().trim_start_matches("sha256:")
        ));
        tool("gzip", &["-t", blob.to_str().unwrap()]);
        let listing = tool(
            "tar",
            &[
                "--full-time",
                "--numeric-owner",
                "-tvzf",
                blob.to_str().unwrap(),
            ],
        );
        for line in listing.lines() {
            assert!(
                line.contains("1970-01-01 00:00:00"),
                "mtime must be SOURCE_DATE_EPOCH (0): {line}"
            );
        }
        let names = tool("tar", &["-tzf", blob.to_str().unwrap()]);
        let names: Vec<&str> = names.lines().collect();
        if !l["digest"].as_str().unwrap().is_empty()
            && !names.iter().any(|n| n.starts_with("opt/tool"))
        {
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "entries of generated layers are sorted");
        }
    }
}

#[test]
fn long_names_and_link_targets_use_pax_and_extract_with_gnu_tar() {
    let w = Work::setup();
    let long_dir = format!("/opt/{}", "deep-directory/".repeat(12));
    let dest = format!("{long_dir}file-with-a-long-name-{}.txt", "x".repeat(120));
    let target = format!("/usr/share/{}", "t".repeat(150));
    let recipe = format!(
        "[image]\nname = \"long\"\n\n[[file]]\ndest = \"{dest}\"\ncontent = \"deep\\n\"\n\n[[symlink]]\npath = \"/opt/link\"\ntarget = \"{target}\"\n"
    );
    std::fs::write(w.path("recipes/long.toml"), recipe).unwrap();
    w.cmd()
        .arg("build")
        .arg(w.path("recipes/long.toml"))
        .arg("--out")
        .arg(w.path("out/long"))
        .assert()
        .success();
    let idx: Value =
        serde_json::from_slice(&fs::read(w.path("out/long/index.json")).unwrap()).unwrap();
    let m = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let m: Value =
        serde_json::from_slice(&fs::read(w.path(&format!("out/long/blobs/sha256/{m}"))).unwrap())
            .unwrap();
    let dir = w.path("extracted");
    fs::create_dir_all(&dir).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let blob = w.path(&format!(
            "out/long/blobs/sha256/{}",
            l["digest"].as_str().unwrap().trim_start_matches("sha256:")
        ));
        tool(
            "tar",
            &["-xzf", blob.to_str().unwrap(), "-C", dir.to_str().unwrap()],
        );
    }
    assert_eq!(
        fs::read_to_string(dir.join(dest.trim_start_matches('/'))).unwrap(),
        "deep\n"
    );
    assert_eq!(
        fs::read_link(dir.join("opt/link")).unwrap(),
        PathBuf::from(target)
    );
}
