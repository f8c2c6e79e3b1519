//! Hostile inputs: base image layers and downloaded archives built to write outside the image
//! root (symlinks to host directories with entries, whiteouts and hard links through them, a
//! directory replaced by a symlink). A canary directory outside the root must stay untouched.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{FileServer, Work, assert_ok, stderr};

pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
}

/// An uncompressed tar of `entries`, in that order, names and targets taken literally.
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o755);
        h.set_size(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                (p, b"")
            }
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (p, d)
            }
            E::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(t).unwrap();
                (p, b"")
            }
            E::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(t).unwrap();
                (p, b"")
            }
            E::Char(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (p, b"")
            }
        };
        let bytes = path.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put_blob(dir: &Path, b: &[u8]) -> String {
    let d = sha(b);
    fs::write(dir.join("blobs/sha256").join(&d[7..]), b).unwrap();
    d
}

/// An OCI layout at `dir` tagged `1` whose layers are the (uncompressed) tars given.
pub fn layout(dir: &Path, layers: &[Vec<u8>]) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = put_blob(dir, l);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d, "size": l.len()
        }));
        diff_ids.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "1"}
            }]
        }))
        .unwrap(),
    )
    .unwrap();
}

/// A layer with a static busybox as `/bin/sh`, so `[[run]]` steps can run.
pub fn shell_layer() -> Vec<u8> {
    let busybox =
        fs::read("/usr/bin/busybox").expect("busybox-static is installed by scripts/deps");
    tar(&[
        E::Dir("bin"),
        E::File("bin/busybox", &busybox),
        E::Sym("bin/sh", "busybox"),
        E::Sym("bin/true", "busybox"),
    ])
}

/// A directory outside every image root, with a file in it; returns it and its listing.
fn canary(work: &Work) -> (PathBuf, BTreeMap<String, Vec<u8>>) {
    let c = work.path("canary");
    fs::create_dir_all(c.join("sub")).unwrap();
    fs::write(c.join("keep"), b"keep").unwrap();
    fs::write(c.join("secret"), b"canary-secret").unwrap();
    fs::write(c.join("sub/deep"), b"deep").unwrap();
    let listing = listing(&c);
    (c, listing)
}

fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let data = if e.file_type().is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (rel, data)
        })
        .collect()
}

fn recipe(work: &Work, name: &str, body: &str) -> PathBuf {
    let p = work.path(&format!("recipes/{name}.toml"));
    fs::write(&p, format!("[image]\nname = \"{name}\"\n{body}")).unwrap();
    p
}

fn build(work: &Work, recipe: &Path, out: &str) -> std::process::Output {
    work.cmd()
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(work.path(out))
        .output()
        .unwrap()
}

#[test]
fn hostile_base_layers_stay_inside_the_root() {
    let work = Work::setup();
    let (c, before) = canary(&work);
    let cs = c.to_str().unwrap();
    let up = format!("../../../../../../../..{cs}");
    let layers = vec![
        shell_layer(),
        // A symlink to a host directory, then a file under it.
        tar(&[E::Sym("x", cs), E::File("x/pwned", b"pwned")]),
        // An opaque whiteout and a plain whiteout through such links (relative with `..` too).
        tar(&[
            E::Sym("y", cs),
            E::File("y/.wh..wh..opq", b""),
            E::Sym("z", &up),
            E::File("z/.wh.keep", b""),
            E::File("z/sub/.wh.deep", b""),
        ]),
        // A directory, replaced by a symlink in the next layer, then written through.
        tar(&[E::Dir("d"), E::File("d/inside", b"1")]),
        tar(&[E::Sym("d", cs)]),
        tar(&[E::File("d/pwned-too", b"pwned"), E::Dir("d/newdir")]),
    ];
    layout(&work.path("base"), &layers);
    let r = recipe(
        &work,
        "hostile",
        &format!(
            "base = \"oci:{}:1\"\n\n[[run]]\ncommand = \"echo ran > /ran\"\n",
            work.path("base").display()
        ),
    );
    let o = build(&work, &r, "out/hostile");
    assert_ok(&o);
    assert_eq!(listing(&c), before, "the canary outside the root changed");
    // What the layers wrote landed inside the image, where a container would see it.
    let rootfs = crate::layout::unpack(&work, "out/hostile", "latest");
    let inside = rootfs.join(cs.trim_start_matches('/'));
    assert_eq!(fs::read(inside.join("pwned-too")).unwrap(), b"pwned");
    assert!(inside.join("newdir").is_dir());
    assert_eq!(fs::read(rootfs.join("ran")).unwrap(), b"ran\n");
}

#[test]
fn sandbox_mount_points_that_link_to_the_host_are_replaced() {
    let work = Work::setup();
    let (c, before) = canary(&work);
    let cs = c.to_str().unwrap();
    // bwrap makes its mount points before it enters the root: as links, on the host.
    let layers = vec![
        shell_layer(),
        tar(&[
            E::Sym("tmp", &format!("{cs}/made-by-bwrap")),
            E::Sym("proc", &format!("{cs}/proc-by-bwrap")),
            E::Dir("etc"),
            E::Sym("etc/resolv.conf", &format!("{cs}/resolv-by-bwrap")),
        ]),
    ];
    layout(&work.path("base"), &layers);
    let r = recipe(
        &work,
        "mounts",
        &format!(
            "base = \"oci:{}:1\"\n\n[[run]]\ncommand = \"echo ran > /ran\"\n",
            work.path("base").display()
        ),
    );
    assert_ok(&build(&work, &r, "out/mounts"));
    assert_eq!(listing(&c), before, "the canary outside the root changed");
    let rootfs = crate::layout::unpack(&work, "out/mounts", "latest");
    assert!(rootfs.join("tmp").is_dir() && !rootfs.join("tmp").is_symlink());
    assert_eq!(fs::read(rootfs.join("ran")).unwrap(), b"ran\n");
}

#[test]
fn a_hard_link_through_a_symlink_to_a_host_file_is_refused() {
    let work = Work::setup();
    let (c, before) = canary(&work);
    let cs = c.to_str().unwrap();
    let layers = vec![
        shell_layer(),
        tar(&[E::Sym("h", cs), E::Hard("leak", "h/secret")]),
    ];
    layout(&work.path("base"), &layers);
    let r = recipe(
        &work,
        "hardlink",
        &format!(
            "base = \"oci:{}:1\"\n\n[[run]]\ncommand = \"cat /leak > /copied || true\"\n",
            work.path("base").display()
        ),
    );
    let o = build(&work, &r, "out/hardlink");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot unpack layer"), "{}", stderr(&o));
    assert_eq!(listing(&c), before);
    // The host file was never linked anywhere.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(c.join("secret")).unwrap().nlink(), 1);
}

fn serve_archive(dir: &Path, name: &str, tar: &[u8]) -> String {
    fs::create_dir_all(dir).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, tar).unwrap();
    let bytes = gz.finish().unwrap();
    fs::write(dir.join(name), &bytes).unwrap();
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn hostile_download_archives_are_refused_with_the_entry_named() {
    let work = Work::setup();
    let (c, before) = canary(&work);
    let cs = c.to_str().unwrap();
    let files = work.path("served");
    let server = FileServer::start(&files);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "through-link",
            tar(&[E::Dir("top"), E::Sym("top/x", cs), E::File("top/x/pwned", b"p")]),
            "`top/x/pwned`: it is under `opt/a/x`, a symlink earlier in the archive".into(),
        ),
        (
            "shadow",
            tar(&[E::Dir("top"), E::Hard("top/shadow", "/etc/shadow")]),
            "`top/shadow`: a hard link to `/etc/shadow`, which is not a file earlier in the archive"
                .into(),
        ),
    ];
    for (name, t, expected) in cases {
        let sha = serve_archive(&files, &format!("{name}.tar.gz"), &t);
        let r = recipe(
            &work,
            name,
            &format!(
                "base = \"scratch\"\n\n[[download]]\nurl = \"{}/{name}.tar.gz\"\nsha256 = \"{sha}\"\nextract = \"/opt/a\"\nstrip_components = 1\n",
                server.url
            ),
        );
        let o = build(&work, &r, &format!("out/{name}"));
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(&expected), "{name}: {}", stderr(&o));
        assert!(!work.path(&format!("out/{name}/index.json")).exists());
    }
    assert_eq!(listing(&c), before);
}

#[test]
fn device_nodes_in_an_archive_keep_their_numbers() {
    let work = Work::setup();
    let files = work.path("served");
    let server = FileServer::start(&files);
    let sha = serve_archive(
        &files,
        "dev.tar.gz",
        &tar(&[E::Dir("dev"), E::Char("dev/null", 1, 3)]),
    );
    let r = recipe(
        &work,
        "devnodes",
        &format!(
            "base = \"scratch\"\n\n[[download]]\nurl = \"{}/dev.tar.gz\"\nsha256 = \"{sha}\"\nextract = \"/\"\n",
            server.url
        ),
    );
    let o = build(&work, &r, "out/devnodes");
    assert_ok(&o);
    let listing = crate::tool(
        "sh",
        &[
            "-c",
            &format!(
                "for b in {}/blobs/sha256/*; do tar -tvzf $b 2>/dev/null || true; done",
                work.path("out/devnodes").display()
            ),
        ],
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("crw") && l.contains("1,3") && l.ends_with("dev/null")),
        "{listing}"
    );
}
