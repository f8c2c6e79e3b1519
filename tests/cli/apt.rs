//! Apt packages from a fixture repository served on 127.0.0.1: small .debs built here with
//! `dpkg-deb`, a `Packages` index, and an `InRelease` signed with a throwaway OpenPGP key.
//! The built image's dpkg database is read back with the host's `dpkg`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::{FileServer, Work, assert_ok, stderr, stdout, tool};

/// A throwaway GnuPG home with one signing key.
pub(crate) struct Signer {
    home: TempDir,
}

impl Signer {
    fn new(name: &str) -> Signer {
        let home = tempfile::tempdir().unwrap();
        let o = Std::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@example.invalid>"))
            .args(["ed25519", "sign", "never"])
            .output()
            .expect("gpg is needed (.ci/run installs it)");
        assert_ok(&o);
        Signer { home }
    }

    pub(crate) fn export(&self, to: &Path, armor: bool) {
        let mut c = Std::new("gpg");
        c.arg("--homedir").arg(self.home.path()).arg("--batch");
        if armor {
            c.arg("--armor");
        }
        let o = c.arg("--export").output().unwrap();
        assert_ok(&o);
        fs::write(to, o.stdout).unwrap();
    }

    fn clearsign(&self, input: &Path, output: &Path) {
        let _ = fs::remove_file(output);
        let o = Std::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args([
                "--batch",
                "--yes",
                "--digest-algo",
                "SHA512",
                "--clearsign",
                "-o",
            ])
            .arg(output)
            .arg(input)
            .output()
            .unwrap();
        assert_ok(&o);
    }
}

/// A package to build: control fields, files (path, content, mode), maintainer scripts.
pub(crate) struct Pkg {
    control: String,
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    scripts: Vec<(&'static str, String)>,
    conffiles: Vec<String>,
    compression: &'static str,
}

pub(crate) fn pkg(name: &str, version: &str, extra: &str) -> Pkg {
    Pkg {
        control: format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Tests <t@example.invalid>\n{extra}Description: fixture package {name}\n A package built by the imgbuild tests.\n"
        ),
        files: vec![(
            format!("usr/share/doc/{name}/copyright"),
            format!("{name} {version}\n").into_bytes(),
            0o644,
        )],
        scripts: Vec::new(),
        conffiles: Vec::new(),
        compression: "xz",
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The binaries dpkg needs to configure packages, with their libraries, as package files
/// (so a `base = "scratch"` image can run `dpkg --configure -a`).
fn host_tools() -> Vec<(String, Vec<u8>, u32)> {
    let mut bins = Vec::new();
    for bin in [
        "sh",
        "dash",
        "rm",
        "tar",
        "diff",
        "ldconfig",
        "start-stop-daemon",
        "dpkg",
        "dpkg-deb",
        "dpkg-split",
        "dpkg-divert",
        "dpkg-maintscript-helper",
        "cat",
        "mkdir",
        "chmod",
        "printf",
        "ls",
        "sed",
        "cmp",
        "mv",
        "ln",
        "readlink",
        "dirname",
        "basename",
        "echo",
        "test",
        "[",
        "setcap",
        "getcap",
    ] {
        let path = ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"]
            .iter()
            .map(|d| format!("{d}{bin}"))
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("{bin} is needed on the host"));
        let dest = if bin == "ldconfig" || bin == "start-stop-daemon" {
            format!("usr/sbin/{bin}")
        } else {
            format!("usr/bin/{bin}")
        };
        bins.push((dest, PathBuf::from(path)));
    }
    with_libraries(bins)
}

/// The host's apt (apt-get, apt-mark, its methods, gpgv) with the libraries `host_tools`
/// lacks, as package files: a fixture image where a user can run `apt-get install`.
fn host_apt() -> Vec<(String, Vec<u8>, u32)> {
    // apt 2.6 checks signatures through the `apt-key` shell script, with these tools.
    let mut bins: Vec<(String, PathBuf)> = [
        "apt-get",
        "apt-mark",
        "apt-config",
        "apt-key",
        "gpgv",
        "mktemp",
        "grep",
        "cut",
        "touch",
        "find",
        "cp",
        "stat",
        "sort",
        "wc",
        "uniq",
        "tr",
        "id",
        "head",
        "awk",
        "base64",
    ]
    .iter()
    .map(|b| {
        (
            format!("usr/bin/{b}"),
            PathBuf::from(format!("/usr/bin/{b}")),
        )
    })
    .collect();
    for m in ["http", "gpgv", "store", "file", "copy"] {
        let p = format!("/usr/lib/apt/methods/{m}");
        bins.push((p[1..].to_string(), PathBuf::from(p)));
    }
    let have: std::collections::BTreeSet<String> = host_tools().into_iter().map(|f| f.0).collect();
    let mut out = with_libraries(bins);
    out.retain(|f| !have.contains(&f.0));
    // apt-key is a script: `ldd` finds nothing, the copy is all it needs.
    // dpkg's architecture tables, which apt reads at start.
    for t in ["cputable", "ostable", "tupletable", "abitable"] {
        let p = format!("/usr/share/dpkg/{t}");
        if let Ok(data) = fs::read(&p) {
            out.push((p[1..].to_string(), data, 0o644));
        }
    }
    // The directories apt expects, as its package would ship them.
    for d in [
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "etc/apt/keyrings",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ] {
        out.push((format!("{d}/.placeholder"), Vec::new(), 0o644));
    }
    out
}

/// `bins` (package path, host path) and every library they load, at merged-/usr paths.
fn with_libraries(bins: Vec<(String, PathBuf)>) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut libs = std::collections::BTreeSet::new();
    for (dest, path) in bins {
        let real = fs::canonicalize(&path).unwrap();
        out.push((dest, fs::read(&real).unwrap(), 0o755));
        let ldd = Std::new("ldd").arg(&real).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let p = line
                .split("=>")
                .nth(1)
                .unwrap_or(line)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if p.starts_with('/') {
                libs.insert(p.to_string());
            }
        }
    }
    for l in libs {
        let data = fs::read(fs::canonicalize(&l).unwrap()).unwrap();
        // Under merged /usr: /lib/x -> usr/lib/x, /lib64/x -> usr/lib64/x.
        let rel = l.trim_start_matches('/').trim_start_matches("usr/");
        out.push((format!("usr/{rel}"), data, 0o755));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// A repository under `root`: `dists/test/{InRelease,Release}`, `main/binary-amd64/Packages.gz`.
pub(crate) struct Repo {
    pub(crate) root: TempDir,
    pub(crate) signer: Signer,
    debs: Vec<(String, String)>, // (pool path, control)
}

impl Repo {
    fn new() -> Repo {
        Repo {
            root: tempfile::tempdir().unwrap(),
            signer: Signer::new("fixture-archive"),
            debs: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, p: Pkg) {
        let name = p.control.lines().next().unwrap()["Package: ".len()..].to_string();
        let version = p.control.lines().nth(1).unwrap()["Version: ".len()..].to_string();
        let build = tempfile::tempdir().unwrap();
        let root = build.path().join("pkg");
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        for (path, data, mode) in &p.files {
            let f = root.join(path);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, data).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
        }
        fs::write(root.join("DEBIAN/control"), &p.control).unwrap();
        for (s, body) in &p.scripts {
            let f = root.join("DEBIAN").join(s);
            fs::write(&f, body).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        }
        if !p.conffiles.is_empty() {
            fs::write(root.join("DEBIAN/conffiles"), p.conffiles.join("\n") + "\n").unwrap();
        }
        let rel = format!("pool/main/{name}_{version}_amd64.deb");
        let out = self.root.path().join(&rel);
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        tool(
            "dpkg-deb",
            &[
                "--root-owner-group",
                &format!("-Z{}", p.compression),
                "--build",
                root.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        );
        self.debs.push((rel, p.control));
    }

    /// Writes Packages, Release and InRelease (signed by `signer`, default: the repo's key).
    pub(crate) fn publish(&self, signer: Option<&Signer>) {
        let mut index = String::new();
        for (rel, control) in &self.debs {
            let data = fs::read(self.root.path().join(rel)).unwrap();
            index.push_str(control.trim_end());
            index.push_str(&format!(
                "\nFilename: {rel}\nSize: {}\nSHA256: {}\n\n",
                data.len(),
                sha256(&data)
            ));
        }
        let dir = self.root.path().join("dists/test/main/binary-amd64");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("Packages"), &index).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(index.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        fs::write(dir.join("Packages.gz"), &gz).unwrap();
        let release = format!(
            "Origin: imgbuild-tests\nSuite: test\nCodename: test\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nArchitectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.gz\n",
            sha256(index.as_bytes()),
            index.len(),
            sha256(&gz),
            gz.len()
        );
        let dists = self.root.path().join("dists/test");
        fs::write(dists.join("Release"), release).unwrap();
        signer
            .unwrap_or(&self.signer)
            .clearsign(&dists.join("Release"), &dists.join("InRelease"));
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
}

pub(crate) fn fixture_repo() -> Repo {
    let mut r = Repo::new();
    let mut base = pkg(
        "fixture-base",
        "1.0",
        "Essential: yes\nPriority: required\n",
    );
    base.files.extend(host_tools());
    base.compression = "zstd";
    r.add(base);
    let mut lib1 = pkg("fixture-lib", "1.0", "");
    lib1.files
        .push(("usr/lib/fixture/version".into(), b"1.0\n".to_vec(), 0o644));
    r.add(lib1);
    let mut lib2 = pkg("fixture-lib", "1.2~rc1", "Multi-Arch: same\n");
    lib2.files.push((
        "usr/lib/fixture/version".into(),
        b"1.2~rc1\n".to_vec(),
        0o644,
    ));
    lib2.compression = "gzip";
    r.add(lib2);
    r.add(pkg(
        "fixture-provider",
        "3",
        "Provides: fixture-virtual (= 3)\n",
    ));
    let mut hello = pkg(
        "fixture-hello",
        "2:1.0-1",
        "Depends: fixture-missing | fixture-lib (>= 1.1), fixture-virtual (>= 2), fixture-base\nConflicts: fixture-lib (<< 1.1)\n",
    );
    hello.files.push((
        "usr/bin/hello-fixture".into(),
        b"#!/bin/sh\necho hello from the fixture\n".to_vec(),
        0o755,
    ));
    hello.files.push((
        "etc/fixture.conf".into(),
        b"greeting=hello\n".to_vec(),
        0o644,
    ));
    hello
        .files
        .push(("bin/hello-old-path".into(), b"#!/bin/sh\n".to_vec(), 0o755));
    hello.conffiles.push("/etc/fixture.conf".into());
    hello.scripts.push((
        "postinst",
        "#!/bin/sh\nset -e\nmkdir -p /var/lib/fixture\necho \"$1\" > /var/lib/fixture/configured\n"
            .into(),
    ));
    r.add(hello);
    // Like iputils-ping: the postinst gives the binary a file capability.
    let mut ping = pkg("fixture-ping", "1.0", "Depends: fixture-base\n");
    ping.files.push((
        "usr/bin/fixture-ping".into(),
        b"#!/bin/sh\necho ping\n".to_vec(),
        0o755,
    ));
    ping.scripts.push((
        "postinst",
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then setcap cap_net_raw+ep /usr/bin/fixture-ping; fi\n"
            .into(),
    ));
    r.add(ping);
    // For images without a shell: a conffile and nothing to run; a postinst that honours
    // DPKG_ROOT; a postinst that writes to the system it runs on, whatever DPKG_ROOT says.
    let mut conf = pkg("fixture-conf", "1.0", "");
    conf.files.push((
        "etc/fixture-conf.conf".into(),
        b"setting=1\n".to_vec(),
        0o644,
    ));
    conf.conffiles.push("/etc/fixture-conf.conf".into());
    r.add(conf);
    let mut aware = pkg("fixture-rootaware", "1.0", "");
    aware.scripts.push((
        "postinst",
        "#!/bin/sh\nset -e\nmkdir -p \"$DPKG_ROOT/var/lib/fixture\"\necho \"$1 root=$DPKG_ROOT\" > \"$DPKG_ROOT/var/lib/fixture/rootaware\"\n".into(),
    ));
    r.add(aware);
    let mut writer = pkg("fixture-hostwriter", "1.0", "");
    writer.scripts.push((
        "postinst",
        "#!/bin/sh\nset -e\necho pwned > /etc/imgbuild-fixture-hostwriter\n".into(),
    ));
    r.add(writer);
    let mut apt = pkg("fixture-apt", "1.0", "Depends: fixture-base\n");
    apt.files.extend(host_apt());
    apt.compression = "zstd";
    r.add(apt);
    r
}

pub(crate) fn recipe(work: &Work, repo: &FileServer, key: &str) -> PathBuf {
    let path = work.path("recipes/fixture-apt.toml");
    fs::write(
        &path,
        format!(
            r#"[image]
name = "fixture-apt"
base = "scratch"

[apt]
packages = ["fixture-hello"]

[[apt.sources]]
name = "fixture"
uri = "{}"
suite = "test"
components = ["main"]
key = "{key}"
"#,
            repo.url
        ),
    )
    .unwrap();
    path
}

/// The fixture repository published and served, a workspace holding its key, and the fixture
/// recipe (`recipes/fixture-apt.toml`) asking for `packages`, a TOML array.
pub(crate) struct Fixture {
    pub(crate) work: Work,
    pub(crate) recipe: PathBuf,
    pub(crate) server: FileServer,
    _repo: Repo,
}

pub(crate) fn fixture(packages: &str) -> Fixture {
    let repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let recipe = recipe(&work, &server, "fixture.asc");
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace(r#"["fixture-hello"]"#, packages);
    fs::write(&recipe, text).unwrap();
    Fixture {
        work,
        recipe,
        server,
        _repo: repo,
    }
}

pub(crate) fn dpkg_list(rootfs: &Path) -> String {
    tool(
        "dpkg-query",
        &[
            "--admindir",
            rootfs.join("var/lib/dpkg").to_str().unwrap(),
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Package} ${Version}\\n",
        ],
    )
}

pub(crate) fn unpack(work: &Work, out: &str) -> PathBuf {
    let bundle = work.path(&format!("{out}-bundle"));
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", work.path(out).display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

#[test]
fn lock_build_configure_and_read_back_with_dpkg() {
    let repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");

    let o = work.cmd().arg("lock").arg(&r).output().unwrap();
    assert_ok(&o);
    let lock = fs::read_to_string(work.path("recipes/fixture-apt.lock")).unwrap();
    for want in [
        "name = \"fixture-hello\"\nversion = \"2:1.0-1\"",
        "name = \"fixture-lib\"\nversion = \"1.2~rc1\"",
        "name = \"fixture-provider\"",
        "name = \"fixture-base\"",
        "inrelease = \"sha256:",
    ] {
        assert!(lock.contains(want), "lock lacks {want}:\n{lock}");
    }
    assert!(
        !lock.contains("name = \"fixture-lib\"\nversion = \"1.0\""),
        "the older fixture-lib is not chosen"
    );

    let meta = work.build_metadata(work.cmd(), &r, "out/apt");
    let steps: Vec<&str> = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert!(steps[0].starts_with("merged /usr"), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.starts_with("dpkg --configure -a")),
        "{steps:?}"
    );
    assert_eq!(meta["packages"].as_array().unwrap().len(), 4);
    assert!(
        work.path("out/apt/imgbuild.lock").is_file(),
        "the build records its lock"
    );

    let rootfs = unpack(&work, "out/apt");
    let list = dpkg_list(&rootfs);
    for want in [
        "ii  fixture-base 1.0",
        "ii  fixture-hello 2:1.0-1",
        "ii  fixture-lib 1.2~rc1",
        "ii  fixture-provider 3",
    ] {
        assert!(list.contains(want), "dpkg lists {list}");
    }
    // The postinst ran in the sandbox with `configure`; the conffile is in place.
    assert_eq!(
        fs::read_to_string(rootfs.join("var/lib/fixture/configured")).unwrap(),
        "configure\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/fixture.conf")).unwrap(),
        "greeting=hello\n"
    );
    assert!(!rootfs.join("etc/fixture.conf.dpkg-new").exists());
    // Merged /usr: a package's /bin file lands in /usr/bin, listed under its package path.
    assert!(rootfs.join("usr/bin/hello-old-path").is_file());
    assert!(
        fs::symlink_metadata(rootfs.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let files = tool(
        "dpkg-query",
        &[
            "--admindir",
            rootfs.join("var/lib/dpkg").to_str().unwrap(),
            "-L",
            "fixture-hello",
        ],
    );
    assert!(files.contains("/bin/hello-old-path\n"), "{files}");
    assert!(files.contains("/etc/fixture.conf\n"), "{files}");
    // dpkg verifies every installed file against the package's md5sums.
    tool("dpkg", &["--root", rootfs.to_str().unwrap(), "--verify"]);
    let audit = tool("dpkg", &["--root", rootfs.to_str().unwrap(), "--audit"]);
    assert_eq!(audit.trim(), "", "dpkg --audit is clean");
    // dpkg's arch file names the image's architecture, and no foreign one.
    assert_eq!(
        fs::read_to_string(rootfs.join("var/lib/dpkg/arch")).unwrap(),
        "amd64\n"
    );
    let foreign = tool(
        "dpkg",
        &[
            "--root",
            rootfs.to_str().unwrap(),
            "--print-foreign-architectures",
        ],
    );
    assert_eq!(foreign.trim(), "", "no foreign architectures");
    // Leftovers are gone.
    assert!(!rootfs.join("var/log/dpkg.log").exists());
    assert!(!rootfs.join("var/lib/dpkg/status-old").exists());

    // A second build reuses every layer; --locked works from the lock alone.
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--locked")
        .arg("--out")
        .arg(work.path("out/apt2"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), meta["manifest"].as_str().unwrap());
    assert!(stderr(&o).contains("(8 cached, 0 built)"), "{}", stderr(&o));

    // Without configure, packages stay unpacked.
    let o = work
        .cmd()
        .arg("--quiet")
        .arg("build")
        .arg(&r)
        .args(["--no-configure", "--out"])
        .arg(work.path("out/unconf"))
        .output()
        .unwrap();
    assert_ok(&o);
    let list = dpkg_list(&unpack(&work, "out/unconf"));
    assert!(list.contains("iU  fixture-hello 2:1.0-1"), "{list}");
}

#[test]
fn signatures_indexes_and_debs_are_verified() {
    let repo = fixture_repo();
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.gpg"), false);
    let r = recipe(&work, &server, "fixture.gpg");
    let fail = |what: &str| {
        let o = work.cmd().arg("lock").arg(&r).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        stderr(&o)
    };

    // Signed by another key.
    let stranger = Signer::new("stranger");
    repo.publish(Some(&stranger));
    let e = fail("wrong key");
    assert!(e.contains("does not verify with the key in"), "{e}");
    assert!(e.contains("fixture.gpg"), "{e}");

    // Not signed at all.
    repo.publish(None);
    fs::copy(
        repo.path("dists/test/Release"),
        repo.path("dists/test/InRelease"),
    )
    .unwrap();
    let e = fail("unsigned");
    assert!(e.contains("is not signed"), "{e}");

    // A signed Release whose text was changed afterwards.
    repo.publish(None);
    let ir = fs::read_to_string(repo.path("dists/test/InRelease")).unwrap();
    fs::write(
        repo.path("dists/test/InRelease"),
        ir.replace("Origin: imgbuild-tests", "Origin: evil"),
    )
    .unwrap();
    let e = fail("edited InRelease");
    assert!(e.contains("does not verify"), "{e}");

    // A Packages file changed after signing.
    repo.publish(None);
    let p = repo.path("dists/test/main/binary-amd64/Packages.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"Package: evil\nVersion: 1\nArchitecture: amd64\nFilename: x\n")
        .unwrap();
    fs::write(&p, gz.finish().unwrap()).unwrap();
    let e = fail("tampered Packages");
    assert!(
        e.contains("does not match the sha256 in the signed Release"),
        "{e}"
    );

    // A .deb swapped after the index was signed: refused at build time, nothing cached.
    repo.publish(None);
    let o = work.cmd().arg("lock").arg(&r).output().unwrap();
    assert_ok(&o);
    let deb = repo.path("pool/main/fixture-provider_3_amd64.deb");
    let mut bytes = fs::read(&deb).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    fs::write(&deb, bytes).unwrap();
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--locked")
        .arg("--out")
        .arg(work.path("out/t"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("fixture-provider_3_amd64.deb does not match its sha256"),
        "{e}"
    );
    assert!(!work.path("out/t").exists());
}

/// Writes the entries of a hand-made data.tar.
type DataWriter = dyn Fn(&mut tar::Builder<Vec<u8>>);

#[test]
fn unsafe_paths_in_a_deb_fail() {
    // dpkg-deb refuses to build these, so the .deb is assembled by hand.
    let mut repo = Repo::new();
    let evil = |name: &str, entry: &dyn Fn(&mut tar::Builder<Vec<u8>>)| -> (String, Vec<u8>) {
        let control = format!(
            "Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: t\nDescription: evil\n"
        );
        let mut c = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(control.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        c.append_data(&mut h, "./control", control.as_bytes())
            .unwrap();
        let mut d = tar::Builder::new(Vec::new());
        entry(&mut d);
        let mut ar = ar::Builder::new(Vec::new());
        for (n, b) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", c.into_inner().unwrap()),
            ("data.tar", d.into_inner().unwrap()),
        ] {
            ar.append(
                &ar::Header::new(n.as_bytes().to_vec(), b.len() as u64),
                b.as_slice(),
            )
            .unwrap();
        }
        (control, ar.into_inner().unwrap())
    };
    let cases: Vec<(&str, Box<DataWriter>, &str)> = vec![
        (
            "evil-dotdot",
            Box::new(|d| {
                let mut h = tar::Header::new_old();
                h.set_size(1);
                h.set_mode(0o644);
                h.as_old_mut().name[..14].copy_from_slice(b"./../etc/owned");
                h.set_cksum();
                d.append(&h, &b"x"[..]).unwrap();
            }),
            "`..` component",
        ),
        (
            "evil-link",
            Box::new(|d| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                h.set_uid(0);
                h.set_gid(0);
                d.append_link(&mut h, "./usr/x", "../../../../etc/passwd")
                    .unwrap();
            }),
            "symlink leaves the root",
        ),
    ];
    for (name, entry, _) in &cases {
        let (control, bytes) = evil(name, entry.as_ref());
        let rel = format!("pool/main/{name}_1_amd64.deb");
        fs::create_dir_all(repo.path("pool/main")).unwrap();
        fs::write(repo.path(&rel), bytes).unwrap();
        repo.debs.push((rel, control));
    }
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    for (name, _, why) in &cases {
        let text = fs::read_to_string(&r).unwrap();
        let text = text.replace(
            &text[text.find("packages = ").unwrap()..text.find("\n\n[[apt").unwrap()],
            &format!("packages = [\"{name}\"]"),
        );
        fs::write(&r, text).unwrap();
        let o = work
            .cmd()
            .arg("build")
            .arg(&r)
            .arg("--no-configure")
            .arg("--out")
            .arg(work.path("out/e"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{name}_1_amd64.deb: unsafe path")),
            "{e}"
        );
        assert!(e.contains(why), "{e}");
        let _ = stdout(&o);
    }
}

#[test]
fn stale_lock_with_locked_is_bad_input() {
    let repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--locked")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fixture-apt.lock does not exist"),
        "{}",
        stderr(&o)
    );
    assert_ok(&work.cmd().arg("lock").arg(&r).output().unwrap());
    let text = fs::read_to_string(&r).unwrap().replace(
        "[\"fixture-hello\"]",
        "[\"fixture-hello\", \"fixture-lib=1.0\"]",
    );
    fs::write(&r, text).unwrap();
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--locked")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match the recipe"),
        "{}",
        stderr(&o)
    );
    // Without --locked the build resolves again, and the conflict is explained.
    let o = work.cmd().arg("lock").arg(&r).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("fixture-hello 2:1.0-1 conflicts with fixture-lib (<< 1.1)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_steps_become_a_diff_layer() {
    let repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    let mut text = fs::read_to_string(&r).unwrap();
    text.push_str(
        r#"
[[run]]
command = "echo ran as $0 > /etc/run-marker && rm /usr/share/doc/fixture-provider/copyright && mkdir -p /opt/new/dir"
"#,
    );
    fs::write(&r, text).unwrap();
    let meta = work.build_metadata(work.cmd(), &r, "out/run");
    let last = meta["layers"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["step"].as_str().unwrap().starts_with("run echo ran"),
        "{last}"
    );
    let rootfs = unpack(&work, "out/run");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/run-marker")).unwrap(),
        "ran as /bin/sh\n"
    );
    assert!(
        !rootfs
            .join("usr/share/doc/fixture-provider/copyright")
            .exists()
    );
    assert!(rootfs.join("usr/share/doc/fixture-provider").is_dir());
    assert!(rootfs.join("opt/new/dir").is_dir());
    // The run layer holds the changes and a whiteout, nothing of the unchanged image.
    let blob = work.path(&format!(
        "out/run/blobs/sha256/{}",
        &last["digest"].as_str().unwrap()["sha256:".len()..]
    ));
    let listing = tool("tar", &["-tzf", blob.to_str().unwrap()]);
    assert!(
        listing.contains("usr/share/doc/fixture-provider/.wh.copyright"),
        "{listing}"
    );
    assert!(listing.contains("etc/run-marker"), "{listing}");
    assert!(!listing.contains("usr/bin/dpkg"), "{listing}");
    // Same inputs, same bytes: a rebuild from a fresh cache gives the same digest.
    let again = work.build_metadata(work.cmd_with_cache(&work.path("cache2")), &r, "out/run2");
    assert_eq!(again["manifest"], meta["manifest"]);
}

#[test]
fn file_capabilities_set_by_a_postinst_reach_the_image_reproducibly() {
    let f = fixture(r#"["fixture-hello", "fixture-ping"]"#);
    let (work, r) = (&f.work, &f.recipe);
    let meta = work.build_metadata(work.cmd(), r, "out/caps");
    // The configure layer carries the capability as a PAX SCHILY.xattr record.
    let configure = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["step"].as_str().unwrap().starts_with("dpkg --configure"))
        .unwrap()
        .clone();
    let blob = work.path(&format!(
        "out/caps/blobs/sha256/{}",
        &configure["digest"].as_str().unwrap()["sha256:".len()..]
    ));
    let listing = tool(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "-tvvzf",
            blob.to_str().unwrap(),
        ],
    );
    assert!(
        listing.contains("usr/bin/fixture-ping"),
        "the setcap made the file part of the configure layer: {listing}"
    );
    // umoci unpacks it with the capability, as a container runtime would.
    let rootfs = unpack(work, "out/caps");
    let ping = rootfs.join("usr/bin/fixture-ping");
    assert_eq!(
        tool("getcap", &[ping.to_str().unwrap()]).trim(),
        format!("{} cap_net_raw=ep", ping.display())
    );
    assert!(dpkg_list(&rootfs).contains("ii  fixture-ping 1.0"));
    // Same inputs, same bytes, capability included.
    let again = work.build_metadata(work.cmd_with_cache(&work.path("cache2")), r, "out/caps2");
    assert_eq!(again["manifest"], meta["manifest"]);
    // A later step's sandbox root is unpacked from the layers with the capability.
    let mut text = fs::read_to_string(r).unwrap();
    text.push_str("\n[[run]]\ncommand = \"getcap /usr/bin/fixture-ping > /etc/caps-seen\"\n");
    fs::write(r, text).unwrap();
    work.build_metadata(work.cmd(), r, "out/caps3");
    let rootfs = unpack(work, "out/caps3");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/caps-seen")).unwrap(),
        "/usr/bin/fixture-ping cap_net_raw=ep\n"
    );
}

/// Runs `script` with `/bin/sh` inside `rootfs` (bubblewrap, the host's network): what a
/// user of the image would do in a container.
fn in_image(rootfs: &Path, script: &str) -> std::process::Output {
    Std::new("bwrap")
        .arg("--bind")
        .arg(rootfs)
        .arg("/")
        .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
        .args(["--unshare-pid", "--die-with-parent", "--clearenv"])
        .args(["--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin"])
        .args(["--setenv", "DEBIAN_FRONTEND", "noninteractive"])
        .args(["/bin/sh", "-c", script])
        .output()
        .unwrap()
}

#[test]
fn apt_get_works_in_the_image_and_knows_what_was_auto_installed() {
    let f = fixture(r#"["fixture-hello", "fixture-apt"]"#);
    let (work, r) = (&f.work, &f.recipe);
    let text = fs::read_to_string(r).unwrap();
    work.build_metadata(work.cmd(), r, "out/aptin");
    let rootfs = unpack(work, "out/aptin");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/apt/sources.list.d/fixture.sources")).unwrap(),
        format!(
            "Types: deb\nURIs: {}\nSuites: test\nComponents: main\nSigned-By: /etc/apt/keyrings/fixture.asc\n",
            f.server.url
        )
    );
    assert_eq!(
        fs::read(rootfs.join("etc/apt/keyrings/fixture.asc")).unwrap(),
        fs::read(work.path("recipes/fixture.asc")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("var/lib/apt/extended_states")).unwrap(),
        "Package: fixture-base\nArchitecture: amd64\nAuto-Installed: 1\n\n\
         Package: fixture-lib\nArchitecture: amd64\nAuto-Installed: 1\n\n\
         Package: fixture-provider\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    );
    // A user of the image: apt-get update and install against the fixture repository, with
    // the key the recipe named, then apt's own view of what was pulled in as a dependency.
    let o = in_image(
        &rootfs,
        "apt-get update && apt-get install -y fixture-ping && echo AUTO && apt-mark showauto && echo MANUAL && apt-mark showmanual",
    );
    assert_ok(&o);
    let out = stdout(&o);
    let (_, marks) = out.split_once("AUTO\n").unwrap();
    let (auto, manual) = marks.split_once("MANUAL\n").unwrap();
    assert_eq!(
        auto, "fixture-base\nfixture-lib\nfixture-provider\n",
        "{out}"
    );
    assert_eq!(
        manual, "fixture-apt\nfixture-hello\nfixture-ping\n",
        "{out}"
    );
    assert!(
        dpkg_list(&rootfs).contains("ii  fixture-ping 1.0"),
        "{}",
        dpkg_list(&rootfs)
    );

    // `keep_sources = false`: the mirror was for the build only.
    fs::write(r, text.replace("[apt]\n", "[apt]\nkeep_sources = false\n")).unwrap();
    work.build_metadata(work.cmd(), r, "out/nosources");
    let rootfs = unpack(work, "out/nosources");
    assert!(
        !rootfs
            .join("etc/apt/sources.list.d/fixture.sources")
            .exists()
    );
    assert!(!rootfs.join("etc/apt/keyrings/fixture.asc").exists());
    assert!(rootfs.join("var/lib/apt/extended_states").is_file());
}

#[test]
fn a_source_for_another_architecture_is_not_used() {
    let repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    let text = fs::read_to_string(&r).unwrap();
    // apt's `[arch=arm64]`: on linux/amd64 the source serves nothing.
    fs::write(
        &r,
        text.replace(
            "components = [\"main\"]",
            "components = [\"main\"]\narch = [\"arm64\"]",
        ),
    )
    .unwrap();
    let o = work.cmd().arg("lock").arg(&r).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("fixture-hello"), "{}", stderr(&o));
    assert_eq!(
        server.hits("/dists/test/InRelease"),
        0,
        "the source is not read"
    );
    // The same source for amd64 serves it.
    fs::write(
        &r,
        text.replace(
            "components = [\"main\"]",
            "components = [\"main\"]\narch = [\"amd64\"]",
        ),
    )
    .unwrap();
    assert_ok(&work.cmd().arg("lock").arg(&r).output().unwrap());
    assert!(server.hits("/dists/test/InRelease") >= 1);
}
