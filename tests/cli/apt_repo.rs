//! The fixture apt repository the apt tests install from: small .debs built here with
//! `dpkg-deb` (the host's dpkg, shell tools and apt copied in with their libraries), a
//! `Packages` index and an `InRelease` signed with a throwaway OpenPGP key, served on
//! 127.0.0.1; and the helpers that read a built image back.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::{FileServer, Work, assert_ok, tool};

/// A throwaway GnuPG home with one signing key.
pub(crate) struct Signer {
    home: TempDir,
}

impl Signer {
    pub(crate) fn new(name: &str) -> Signer {
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

    /// The primary key's fingerprint.
    pub(crate) fn fingerprint(&self) -> String {
        let o = Std::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--with-colons", "--list-keys"])
            .output()
            .unwrap();
        assert_ok(&o);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .unwrap()
            .to_string()
    }

    /// Adds a signing subkey, which gpg then signs with.
    pub(crate) fn add_signing_subkey(&self) {
        let o = Std::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--passphrase", "", "--quick-add-key"])
            .arg(self.fingerprint())
            .args(["ed25519", "sign", "never"])
            .output()
            .unwrap();
        assert_ok(&o);
    }

    /// A detached signature of `input`.
    pub(crate) fn detach_sign(&self, input: &Path, output: &Path, armor: bool) {
        let _ = fs::remove_file(output);
        let mut c = Std::new("gpg");
        c.arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--yes", "--detach-sign"]);
        if armor {
            c.arg("--armor");
        }
        let o = c.arg("-o").arg(output).arg(input).output().unwrap();
        assert_ok(&o);
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
    arch: String,
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    /// Symbolic links (path, target).
    pub(crate) links: Vec<(String, String)>,
    pub(crate) scripts: Vec<(&'static str, String)>,
    conffiles: Vec<String>,
    compression: &'static str,
}

pub(crate) fn pkg(name: &str, version: &str, extra: &str) -> Pkg {
    pkg_for("amd64", name, version, extra)
}

/// A package for the Debian architecture `arch`.
pub(crate) fn pkg_for(arch: &str, name: &str, version: &str, extra: &str) -> Pkg {
    Pkg {
        control: format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Tests <t@example.invalid>\n{extra}Description: fixture package {name}\n A package built by the imgbuild tests.\n"
        ),
        arch: arch.to_string(),
        links: Vec::new(),
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
        "mkfifo",
        "chown",
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
    pub(crate) debs: Vec<(String, String)>, // (pool path, control)
}

impl Repo {
    pub(crate) fn new() -> Repo {
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
        for (path, target) in &p.links {
            let f = root.join(path);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, &f).unwrap();
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
        let rel = format!("pool/main/{name}_{version}_{}.deb", p.arch);
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

    /// Writes Packages (one index per architecture its packages have, amd64 at least),
    /// Release and InRelease (signed by `signer`, default: the repo's key).
    pub(crate) fn publish(&self, signer: Option<&Signer>) {
        let arch_of = |control: &str| {
            control
                .lines()
                .find_map(|l| l.strip_prefix("Architecture: "))
                .unwrap_or("amd64")
                .to_string()
        };
        let mut archs: Vec<String> = self.debs.iter().map(|(_, c)| arch_of(c)).collect();
        archs.push("amd64".into());
        archs.retain(|a| a != "all");
        archs.sort();
        archs.dedup();
        let mut sums = String::new();
        for arch in &archs {
            let mut index = String::new();
            for (rel, control) in &self.debs {
                let a = arch_of(control);
                if &a != arch && a != "all" {
                    continue;
                }
                let data = fs::read(self.root.path().join(rel)).unwrap();
                index.push_str(control.trim_end());
                index.push_str(&format!(
                    "\nFilename: {rel}\nSize: {}\nSHA256: {}\n\n",
                    data.len(),
                    sha256(&data)
                ));
            }
            let dir = self
                .root
                .path()
                .join(format!("dists/test/main/binary-{arch}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("Packages"), &index).unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(index.as_bytes()).unwrap();
            let gz = gz.finish().unwrap();
            fs::write(dir.join("Packages.gz"), &gz).unwrap();
            sums.push_str(&format!(
                " {} {} main/binary-{arch}/Packages\n {} {} main/binary-{arch}/Packages.gz\n",
                sha256(index.as_bytes()),
                index.len(),
                sha256(&gz),
                gz.len()
            ));
        }
        let release = format!(
            "Origin: imgbuild-tests\nSuite: test\nCodename: test\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nArchitectures: {}\nComponents: main\nSHA256:\n{sums}",
            archs.join(" ")
        );
        let dists = self.root.path().join("dists/test");
        fs::write(dists.join("Release"), release).unwrap();
        signer
            .unwrap_or(&self.signer)
            .clearsign(&dists.join("Release"), &dists.join("InRelease"));
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
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
