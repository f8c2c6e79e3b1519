//! Packages on `base = "scratch"` without a shell: nothing to run, chrootless scripts, and
//! scripts that cannot run chrootless.

use std::fs;

use super::apt_repo::{dpkg_list, fixture, unpack};
use super::{assert_ok, stderr, tool};

/// The fixture recipe's package list set to `packages` (a TOML array).
fn with_packages(recipe: &std::path::Path, packages: &str) -> std::path::PathBuf {
    let text = fs::read_to_string(recipe).unwrap();
    let start = text.find("packages = ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    fs::write(
        recipe,
        format!("{}packages = {packages}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    recipe.to_path_buf()
}

#[test]
fn packages_install_on_scratch_without_a_shell() {
    let f = fixture(r#"["fixture-lib", "fixture-conf"]"#);
    let work = &f.work;

    // Nothing to run: installed as dpkg would, with no sandbox (bubblewrap is not on PATH).
    let r = f.recipe.clone();
    let o = work
        .cmd()
        .env("PATH", "/nonexistent")
        .arg("build")
        .arg(&r)
        .arg("--out")
        .arg(work.path("out/plain"))
        .output()
        .unwrap();
    assert_ok(&o);
    let rootfs = unpack(work, "out/plain");
    assert!(!rootfs.join("bin/sh").exists());
    let list = dpkg_list(&rootfs);
    assert!(list.contains("ii  fixture-conf 1.0"), "{list}");
    assert!(list.contains("ii  fixture-lib 1.2~rc1"), "{list}");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/fixture-conf.conf")).unwrap(),
        "setting=1\n"
    );
    assert!(!rootfs.join("etc/fixture-conf.conf.dpkg-new").exists());
    // The conffile's md5 is recorded as dpkg records it, and dpkg agrees with the tree.
    let conffiles = tool(
        "dpkg-query",
        &[
            "--admindir",
            rootfs.join("var/lib/dpkg").to_str().unwrap(),
            "-W",
            "-f",
            "${Conffiles}",
            "fixture-conf",
        ],
    );
    let md5 = tool(
        "md5sum",
        &[rootfs.join("etc/fixture-conf.conf").to_str().unwrap()],
    );
    assert_eq!(
        conffiles.trim(),
        format!(
            "/etc/fixture-conf.conf {}",
            md5.split_whitespace().next().unwrap()
        )
    );
    tool("dpkg", &["--root", rootfs.to_str().unwrap(), "--verify"]);
    let audit = tool("dpkg", &["--root", rootfs.to_str().unwrap(), "--audit"]);
    assert_eq!(audit.trim(), "");

    // A postinst that honours DPKG_ROOT runs chrootless with the host's dpkg and shell.
    let r = with_packages(&r, r#"["fixture-lib", "fixture-rootaware"]"#);
    let meta = work.build_metadata(work.cmd(), &r, "out/aware");
    let rootfs = unpack(work, "out/aware");
    assert!(!rootfs.join("bin/sh").exists());
    assert!(
        dpkg_list(&rootfs).contains("ii  fixture-rootaware 1.0"),
        "{}",
        dpkg_list(&rootfs)
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("var/lib/fixture/rootaware")).unwrap(),
        "configure root=/target\n"
    );
    assert!(!rootfs.join("var/log/dpkg.log").exists());
    let again = work.build_metadata(work.cmd_with_cache(&work.path("cache2")), &r, "out/aware2");
    assert_eq!(
        again["manifest"], meta["manifest"],
        "chrootless is reproducible"
    );

    // A postinst that writes to the system it runs on: caught in the sandbox, never on the
    // host, and the error names the package and the fix.
    let r = with_packages(&r, r#"["fixture-hostwriter"]"#);
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--out")
        .arg(work.path("out/writer"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    for want in [
        "no /bin/sh",
        "fixture-hostwriter",
        "/etc/imgbuild-fixture-hostwriter",
        "bootstrap",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!std::path::Path::new("/etc/imgbuild-fixture-hostwriter").exists());
}
