//! `[pip]` through the CLI (live: the Debian mirror comes from this machine's apt
//! configuration): the image's own pip resolves against a simple index on 127.0.0.1
//! (`[pip] index_url`), the lock pins the file by URL and sha256, and the build installs it
//! offline on the root the apt steps left.

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::apt_repo::unpack;
use super::proxmox::mirror;
use super::{FileServer, Work};

const WHEEL: &str = "hello_fixture-1.0-py3-none-any.whl";

/// A pure-Python wheel (PEP 427): the module, METADATA, WHEEL and a RECORD of them.
fn wheel(to: &Path) {
    let b64 = |d: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(d))
    };
    let files: [(&str, &[u8]); 3] = [
        (
            "hello_fixture/__init__.py",
            b"GREETING = \"hello from the fixture index\"\n",
        ),
        (
            "hello_fixture-1.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: hello-fixture\nVersion: 1.0\n",
        ),
        (
            "hello_fixture-1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: imgbuild-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ];
    let mut record = String::new();
    for (name, data) in files {
        record.push_str(&format!("{name},sha256={},{}\n", b64(data), data.len()));
    }
    record.push_str("hello_fixture-1.0.dist-info/RECORD,,\n");
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    let mut z = zip::ZipWriter::new(fs::File::create(to).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in files {
        z.start_file(name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.start_file("hello_fixture-1.0.dist-info/RECORD", opts)
        .unwrap();
    z.write_all(record.as_bytes()).unwrap();
    z.finish().unwrap();
}

#[test]
fn pip_packages_resolve_from_an_index_and_install_offline_reproducibly() {
    let work = Work::setup();
    let index = work.path("index");
    let file = index.join("files").join(WHEEL);
    wheel(&file);
    let sha = hex::encode(Sha256::digest(fs::read(&file).unwrap()));
    fs::create_dir_all(index.join("simple/hello-fixture")).unwrap();
    fs::write(
        index.join("simple/hello-fixture/index.html"),
        format!("<!DOCTYPE html><html><body><a href=\"/files/{WHEEL}#sha256={sha}\">{WHEEL}</a></body></html>\n"),
    )
    .unwrap();
    let server = FileServer::start(&index);
    let recipe = work.path("recipes/piptest.toml");
    fs::write(
        &recipe,
        format!(
            r#"[image]
name = "piptest"
base = "scratch"
platform = "linux/amd64"

[apt]
bootstrap = "minbase"
packages = ["python3-pip"]

[[apt.sources]]
name = "debian"
uri = "${{var.mirror}}"
suite = "bookworm"
components = ["main"]
key = "keys/debian-archive-keyring.gpg"

[pip]
packages = ["hello-fixture"]
index_url = "{}/simple"

[[run]]
command = "python3 -B -c 'import hello_fixture; print(hello_fixture.GREETING)' > /greeting"
"#,
            server.url
        ),
    )
    .unwrap();
    let build = |cache: &str, out: &str| {
        let mut cmd = work.cmd_with_cache(&work.path(cache));
        cmd.args(["--var", &format!("mirror={}", mirror())]);
        work.build_metadata(cmd, &recipe, out)["manifest"].clone()
    };
    // Made with the lock: pip resolves on the root the apt steps left, which the build goes
    // on with.
    let first = build("cache", "out/one");
    let lock = fs::read_to_string(work.path("recipes/piptest.lock")).unwrap();
    assert!(
        lock.contains("name = \"hello-fixture\"")
            && lock.contains(&format!("{}/files/{WHEEL}", server.url))
            && lock.contains(&sha),
        "{lock}"
    );
    assert!(server.hits("/simple/hello-fixture/") >= 1);
    assert!(server.hits(&format!("/files/{WHEEL}")) >= 1);
    let rootfs = unpack(&work, "out/one");
    assert_eq!(
        fs::read_to_string(rootfs.join("greeting")).unwrap(),
        "hello from the fixture index\n"
    );
    let installed = rootfs.join("usr/local/lib/python3.11/dist-packages");
    assert!(installed.join("hello_fixture/__init__.py").is_file());
    assert!(
        !installed.join("hello_fixture/__pycache__").exists(),
        "installed with --no-compile"
    );
    // From the lock on an empty cache (no resolution, the root unpacked from the layers):
    // the same image.
    let asked = server.hits("/simple/hello-fixture/");
    assert_eq!(build("cache2", "out/two"), first);
    assert_eq!(
        server.hits("/simple/hello-fixture/"),
        asked,
        "the lock is used"
    );
}
