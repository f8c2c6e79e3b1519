//! Apt packages from the fixture repository ([`super::apt_repo`]) served on 127.0.0.1: lock,
//! build, configure, and the built image's dpkg database read back with the host's `dpkg`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command as Std;

use super::apt_repo::{Repo, Signer, dpkg_list, fixture, fixture_repo, recipe, unpack};
use super::{FileServer, Work, assert_ok, stderr, stdout, tool};

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
    let steps = step_names(&meta);
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

#[test]
fn build_packages_are_there_for_the_runs_and_absent_from_the_image() {
    let f = fixture(r#"["fixture-ping"]"#);
    let (work, r) = (&f.work, &f.recipe);
    let text = fs::read_to_string(r)
        .unwrap()
        .replace("[apt]\n", "[apt]\nbuild_packages = [\"fixture-hello\"]\n");
    let text = format!(
        "{text}\n[[run]]\ncommand = \"hello-fixture > /etc/built-with-hello && cat /var/lib/fixture/configured >> /etc/built-with-hello\"\n"
    );
    fs::write(r, text).unwrap();
    let meta = work.build_metadata(work.cmd(), r, "out/bp");
    // Locked apart from the image's packages: fixture-hello and what only it needs.
    let lock = fs::read_to_string(r.with_extension("lock")).unwrap();
    let build_part = &lock[lock.find("[[build_package]]").expect(&lock)..];
    for p in ["fixture-hello", "fixture-lib", "fixture-provider"] {
        assert!(
            build_part.contains(&format!("name = \"{p}\"")),
            "{p}: {lock}"
        );
    }
    assert!(!build_part.contains("name = \"fixture-ping\""), "{lock}");
    // The run had the build package, configured (its postinst ran).
    let rootfs = unpack(work, "out/bp");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/built-with-hello")).unwrap(),
        "hello from the fixture\nconfigure\n"
    );
    // The image has neither its files nor its dpkg records.
    for gone in [
        "usr/bin/hello-fixture",
        "etc/fixture.conf",
        "var/lib/fixture/configured",
        "usr/lib/fixture/version",
    ] {
        assert!(!rootfs.join(gone).exists(), "{gone} is in the image");
    }
    let list = dpkg_list(&rootfs);
    assert!(list.contains("ii  fixture-ping 1.0"), "{list}");
    for p in ["fixture-hello", "fixture-lib", "fixture-provider"] {
        assert!(!list.contains(p), "{p} in the image's dpkg status:\n{list}");
    }
    let steps = step_names(&meta);
    assert!(
        !steps.iter().any(|s| s.starts_with("build packages")),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|s| s.starts_with("run hello-fixture")),
        "{steps:?}"
    );
    // Rebuilt from a fresh cache: the same image.
    let again = work.build_metadata(work.cmd_with_cache(&work.path("cache2")), r, "out/bp2");
    assert_eq!(again["manifest"], meta["manifest"]);
}

/// The steps after the first that runs programs work on one root carried forward; the image
/// must be the one a build that unpacks cached layers for each step makes. Built three ways:
/// all at once (configure, users, two runs on the carried root), and in three builds on
/// another cache, so the users step reads the cached layers and the last run starts from a
/// root unpacked from them. The last run looks at what the one before left: a file's mtime
/// (a carried root must have the layer's, not the time of the run) and a FIFO (a layer cannot
/// hold one, so a carried root must not either).
#[test]
fn a_root_carried_from_step_to_step_builds_what_cached_layers_build() {
    let f = fixture(r#"["fixture-hello"]"#);
    let (work, r) = (&f.work, &f.recipe);
    let apt_only = fs::read_to_string(r).unwrap();
    let user = "\n[[user]]\nname = \"builder\"\nuid = 1500\n";
    let run1 = "\n[[run]]\ncommand = \"mkdir -p /opt && echo a > /opt/a && mkfifo /opt/fifo && hello-fixture > /opt/hello\"\n";
    let run2 = r#"
[[run]]
command = '''
([ /opt/a -nt /usr/bin/hello-fixture ] && echo newer || echo same age) > /opt/seen
([ -p /opt/fifo ] && echo fifo || echo no fifo) >> /opt/seen
sed -n 's/^\(builder:x:[0-9]*\):.*/\1/p' /etc/passwd >> /opt/seen
'''
"#;
    let whole = format!("{apt_only}{user}{run1}{run2}");
    fs::write(r, &whole).unwrap();
    let meta = work.build_metadata(work.cmd(), r, "out/carried");
    let rootfs = unpack(work, "out/carried");
    let seen = fs::read_to_string(rootfs.join("opt/seen")).unwrap();
    assert_eq!(seen, "same age\nno fifo\nbuilder:x:1500\n");
    assert!(!rootfs.join("opt/fifo").exists());

    let other = work.cmd_with_cache(&work.path("cache2"));
    for (i, text) in [apt_only.clone(), format!("{apt_only}{user}{run1}")]
        .iter()
        .enumerate()
    {
        fs::write(r, text).unwrap();
        work.build_metadata(
            work.cmd_with_cache(&work.path("cache2")),
            r,
            &format!("out/part{i}"),
        );
    }
    fs::write(r, &whole).unwrap();
    let stepwise = work.build_metadata(other, r, "out/stepwise");
    let built: Vec<&str> = stepwise["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["cache"] == "miss")
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(built.len(), 1, "only the last run is built: {built:?}");
    assert_eq!(stepwise["manifest"], meta["manifest"]);
}

#[test]
fn files_append_to_what_the_image_has_keeping_its_mode_and_owner() {
    let f = fixture(r#"["fixture-hello"]"#);
    let (work, r) = (&f.work, &f.recipe);
    let text = fs::read_to_string(r).unwrap();
    // A package's conffile, a file reached through merged /usr's /bin symlink, a new file.
    let text = format!(
        "{text}\n[[file]]\ndest = \"/etc/fixture.conf\"\ncontent = \"extra=1\\n\"\nappend = true\n\
         \n[[file]]\ndest = \"/bin/hello-old-path\"\ncontent = \"echo appended\\n\"\nappend = true\n\
         \n[[file]]\ndest = \"/etc/appended-new\"\ncontent = \"first\\n\"\nappend = true\nmode = 0o600\n"
    );
    fs::write(r, text).unwrap();
    work.build_metadata(work.cmd(), r, "out/append");
    let rootfs = unpack(work, "out/append");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/fixture.conf")).unwrap(),
        "greeting=hello\nextra=1\n"
    );
    let old_path = rootfs.join("usr/bin/hello-old-path");
    assert_eq!(
        fs::read_to_string(&old_path).unwrap(),
        "#!/bin/sh\necho appended\n"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // The package's mode is kept; /bin stays the symlink it was.
    assert_eq!(
        fs::metadata(&old_path).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(
        fs::symlink_metadata(rootfs.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let new = fs::metadata(rootfs.join("etc/appended-new")).unwrap();
    assert_eq!(new.permissions().mode() & 0o7777, 0o600);
    assert_eq!(new.uid(), 0);
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/appended-new")).unwrap(),
        "first\n"
    );
}

/// The step names of a build's layers, from its metadata.
fn step_names(meta: &serde_json::Value) -> Vec<&str> {
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["step"].as_str().unwrap())
        .collect()
}
