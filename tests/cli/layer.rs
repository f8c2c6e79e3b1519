//! `imgbuild layer DIR --out BLOBDIR`: the layer core, checked with GNU tar, gzip, zstd and
//! sha256sum.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use assert_cmd::Command;

use crate::{assert_ok, stdout, tool};

/// Everything GNU tar must restore, per path.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Vec<u8>,
    link: PathBuf,
    /// `getfattr -d -m -` of files and directories: capabilities, user.* attributes.
    xattrs: String,
    /// Index of the first path sharing this inode (hard links).
    inode_group: usize,
}

fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, e) in walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .enumerate()
    {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let content = if ft.is_file() && md.len() < (1 << 24) {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        let link = if ft.is_symlink() {
            fs::read_link(e.path()).unwrap()
        } else {
            PathBuf::new()
        };
        let xattrs = if ft.is_file() || ft.is_dir() {
            xattrs_of(e.path())
        } else {
            String::new()
        };
        let inode_group = if ft.is_file() {
            *inodes.entry(md.ino()).or_insert(i)
        } else {
            i
        };
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let mode = if ft.is_symlink() {
            0
        } else {
            md.permissions().mode() & 0o7777
        };
        out.insert(
            rel,
            Node {
                kind,
                mode,
                uid: md.uid(),
                gid: md.gid(),
                content,
                link,
                xattrs,
                inode_group,
            },
        );
    }
    // Hard-link groups are compared by first member's position in walk order, which is
    // the same in both trees if the trees are the same.
    out
}

/// Every extended attribute of `path` (not followed), hex values, sorted by name.
fn xattrs_of(path: &Path) -> String {
    let o = std::process::Command::new("getfattr")
        .args(["--absolute-names", "-h", "-d", "-m", "-", "-e", "hex"])
        .arg(path)
        .output()
        .unwrap();
    assert_ok(&o);
    let mut lines: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| l.contains('=') && !l.starts_with("security.selinux"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.join("\n")
}

/// A tree with every kind of entry the layer core must carry.
fn make_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("etc/empty-dir")).unwrap();
    fs::create_dir_all(p("usr/bin")).unwrap();
    fs::write(p("etc/hostname"), "imgbuild\n").unwrap();
    fs::write(p("usr/bin/tool"), vec![0x7fu8; 300_000]).unwrap();
    fs::set_permissions(p("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p("etc/secret"), "s").unwrap();
    fs::set_permissions(p("etc/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(p("tmp")).unwrap();
    fs::set_permissions(p("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(p("etc/secret"), Some(1234), Some(5678)).unwrap();
    symlink("tool", p("usr/bin/relative-link")).unwrap();
    symlink("/etc/hostname", p("usr/bin/absolute-link")).unwrap();
    symlink("does-not-exist", p("usr/bin/dangling")).unwrap();
    fs::hard_link(p("usr/bin/tool"), p("usr/bin/tool-hardlink")).unwrap();
    // Long names: a path over 100 bytes, a single name over 100, a path over 255.
    let deep = format!("usr/share/{}", "long-directory-name/".repeat(8));
    fs::create_dir_all(p(&deep)).unwrap();
    fs::write(p(&format!("{deep}{}", "n".repeat(150))), "long\n").unwrap();
    symlink("x".repeat(180), p("usr/bin/long-target")).unwrap();
    // Non-UTF-8 names.
    let latin1 = root.join(OsStr::from_bytes(b"etc/caf\xe9"));
    fs::write(&latin1, "latin-1 name\n").unwrap();
    // A FIFO.
    let fifo = p("tmp/fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    // A file capability (what `setcap` writes for ping) and user attributes on a file and
    // a directory, the directory's given in reverse name order.
    fs::write(p("usr/bin/pinger"), b"\x7fELF").unwrap();
    fs::set_permissions(p("usr/bin/pinger"), fs::Permissions::from_mode(0o755)).unwrap();
    tool(
        "setcap",
        &["cap_net_raw+ep", p("usr/bin/pinger").to_str().unwrap()],
    );
    tool(
        "setfattr",
        &[
            "-n",
            "user.mime_type",
            "-v",
            "text/plain",
            p("etc/hostname").to_str().unwrap(),
        ],
    );
    for (n, v) in [("user.zz", "last"), ("user.aa", "first")] {
        tool(
            "setfattr",
            &["-n", n, "-v", v, p("etc/empty-dir").to_str().unwrap()],
        );
    }
    // Empty file and file of exactly one block.
    fs::write(p("etc/empty"), "").unwrap();
    fs::write(p("etc/block"), vec![b'b'; 512]).unwrap();
}

unsafe extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

fn layer(dir: &Path, out: &Path, args: &[&str]) -> BTreeMap<String, String> {
    let o = Command::cargo_bin("imgbuild")
        .unwrap()
        .args(["layer"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_ok(&o);
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn blob(out: &Path, digest: &str) -> PathBuf {
    out.join("sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn sha256sum(path: &Path) -> String {
    format!(
        "sha256:{}",
        tool("sha256sum", &[path.to_str().unwrap()])
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[test]
fn layers_extract_with_gnu_tar_to_the_identical_tree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_tree(&src);
    let before = snapshot(&src);
    for (comp, test_tool, decompress) in [("gzip", "gzip", "-z"), ("zstd", "zstd", "--zstd")] {
        let out = t.path().join(format!("blobs-{comp}"));
        let one = layer(&src, &out, &["--compression", comp, "--threads", "1"]);
        let two = layer(&src, &out, &["--compression", comp, "--threads", "2"]);
        assert_eq!(one, two, "{comp}: the same bytes at 1 and 2 threads");
        let b = blob(&out, &one["digest"]);
        tool(test_tool, &["-t", "-q", b.to_str().unwrap()]);
        assert_eq!(
            sha256sum(&b),
            one["digest"],
            "digest is the sha256 of the blob"
        );
        assert_eq!(fs::metadata(&b).unwrap().len().to_string(), one["size"]);
        // diff_id is the sha256 of the uncompressed tar.
        let tar_path = t.path().join(format!("layer-{comp}.tar"));
        let flag = if comp == "gzip" { "-dc" } else { "-dcq" };
        let o = std::process::Command::new(test_tool)
            .args([flag, b.to_str().unwrap()])
            .output()
            .unwrap();
        assert_ok(&o);
        fs::write(&tar_path, &o.stdout).unwrap();
        assert_eq!(sha256sum(&tar_path), one["diff_id"]);
        assert_eq!(o.stdout.len().to_string(), one["tar_size"]);

        let dest = t.path().join(format!("extracted-{comp}"));
        fs::create_dir(&dest).unwrap();
        tool(
            "tar",
            &[
                "-x",
                decompress,
                "--same-owner",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-p",
                "-f",
                b.to_str().unwrap(),
                "-C",
                dest.to_str().unwrap(),
            ],
        );
        let after = snapshot(&dest);
        assert!(
            after[&b"usr/bin/pinger"[..]]
                .xattrs
                .contains("security.capability="),
            "{comp}: the capability came through: {:?}",
            after[&b"usr/bin/pinger"[..]]
        );
        assert_eq!(
            tool("getcap", &[dest.join("usr/bin/pinger").to_str().unwrap()]).trim(),
            format!("{} cap_net_raw=ep", dest.join("usr/bin/pinger").display())
        );
        let mut dir_mode_before: Vec<_> = before.keys().collect();
        dir_mode_before.sort();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{comp}: same paths"
        );
        for (path, node) in &before {
            assert_eq!(
                node,
                &after[path],
                "{comp}: {}",
                String::from_utf8_lossy(path)
            );
        }
    }
}

#[test]
fn files_over_8_gib_get_a_pax_size_and_come_back_whole() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let size: u64 = 9 * (1 << 30) + 7;
    let f = fs::File::create(src.join("big.img")).unwrap();
    f.set_len(size).unwrap(); // sparse: no disk used
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = f;
        f.write_all(b"HEAD").unwrap();
        f.seek(SeekFrom::Start(size - 4)).unwrap();
        f.write_all(b"TAIL").unwrap();
    }
    let out = t.path().join("blobs");
    let l = layer(&src, &out, &["--compression", "zstd", "--level", "1"]);
    let b = blob(&out, &l["digest"]);
    // GNU tar reads the size from the PAX header and extracts exactly those bytes, first and
    // last ones included (one streaming pass: 9 GiB never touch the disk).
    let script = "import sys\nn=0\nhead=b''\ntail=b''\nr=sys.stdin.buffer\nwhile True:\n    b=r.read(1<<20)\n    if not b: break\n    if n==0: head=b[:4]\n    tail=(tail+b)[-4:]\n    n+=len(b)\nprint(n, head.decode(), tail.decode())";
    let got = tool(
        "bash",
        &[
            "-c",
            &format!(
                "zstd -dcq '{}' | tar -xOf - big.img | python3 -c \"$0\"",
                b.display()
            ),
            script,
        ],
    );
    assert_eq!(got.trim(), format!("{size} HEAD TAIL"));
    assert!(l["tar_size"].parse::<u64>().unwrap() > size);
}
