//! Random layer sequences (directories, files, symlinks absolute and relative with `..`,
//! whiteouts, opaque directories, hard links) applied by [`apply`] to a root next to a canary
//! directory: nothing outside the root may change, and the root must equal what an
//! in-memory reference applier (chroot semantics, written independently) makes of them.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use proptest::prelude::*;

use super::{Root, apply};

#[derive(Debug, Clone)]
enum Op {
    Dir(String),
    File(String, u8),
    Symlink(String, String),
    Hardlink(String, String),
    Whiteout(String),
    Opaque(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(String),
}

/// The reference: paths (canonical, `/`-joined, no leading `/`) to nodes.
struct Model {
    nodes: BTreeMap<String, Node>,
}

#[derive(Debug)]
struct Fail;

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Model {
    /// Resolves the directory `path` as the kernel would inside a chroot (every symlink
    /// followed, `..` clamped at the root), making missing directories with `create`.
    fn resolve_dir(&mut self, path: &str, create: bool, hops: &mut u32) -> Result<String, Fail> {
        let mut cur: Vec<String> = Vec::new();
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_string)
            .collect();
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let p = join(&cur.join("/"), &c);
            match self.nodes.get(&p).cloned() {
                Some(Node::Dir) => cur.push(c),
                Some(Node::Link(t)) => {
                    *hops += 1;
                    if *hops > 40 {
                        return Err(Fail);
                    }
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    for part in t.split('/').filter(|x| !x.is_empty() && *x != ".").rev() {
                        todo.push(part.to_string());
                    }
                }
                Some(Node::File(_)) => return Err(Fail),
                None if create => {
                    self.nodes.insert(p, Node::Dir);
                    cur.push(c);
                }
                None => return Err(Fail),
            }
        }
        Ok(cur.join("/"))
    }

    fn split(path: &str) -> (&str, &str) {
        path.rsplit_once('/').unwrap_or(("", path))
    }

    fn remove(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.nodes.retain(|k, _| k != p && !k.starts_with(&prefix));
    }

    fn apply(&mut self, op: &Op) -> Result<(), Fail> {
        let mut hops = 0;
        match op {
            Op::Whiteout(p) | Op::Opaque(p) => {
                let (dir, name) = match op {
                    Op::Whiteout(_) => Self::split(p),
                    _ => (p.as_str(), ""),
                };
                let d = match self.resolve_dir(dir, false, &mut hops) {
                    Ok(d) => d,
                    Err(Fail) if hops <= 40 => return Ok(()),
                    Err(f) => return Err(f),
                };
                if name.is_empty() {
                    let prefix = if d.is_empty() {
                        String::new()
                    } else {
                        format!("{d}/")
                    };
                    self.nodes
                        .retain(|k, _| !(k.starts_with(&prefix) && k.len() > prefix.len()));
                } else {
                    self.remove(&join(&d, name));
                }
                Ok(())
            }
            Op::Hardlink(p, target) => {
                let (td, tn) = Self::split(target);
                let td = self.resolve_dir(td, false, &mut hops)?;
                let (dir, name) = Self::split(p);
                let mut hops = 0;
                let d = self.resolve_dir(dir, true, &mut hops)?;
                let dest = join(&d, name);
                self.remove(&dest);
                match self.nodes.get(&join(&td, tn)).cloned() {
                    Some(Node::Dir) | None => Err(Fail),
                    Some(n) => {
                        self.nodes.insert(dest, n);
                        Ok(())
                    }
                }
            }
            Op::Dir(p) | Op::File(p, _) | Op::Symlink(p, _) => {
                let (dir, name) = Self::split(p);
                let d = self.resolve_dir(dir, true, &mut hops)?;
                let dest = join(&d, name);
                let node = match op {
                    Op::Dir(_) => Node::Dir,
                    Op::File(_, b) => Node::File(vec![*b]),
                    Op::Symlink(_, t) => Node::Link(t.clone()),
                    _ => unreachable!(),
                };
                if node == Node::Dir {
                    match self.nodes.get(&dest).cloned() {
                        Some(Node::Dir) => return Ok(()),
                        Some(Node::Link(_)) => {
                            let mut h = 0;
                            let mut probe = Model {
                                nodes: self.nodes.clone(),
                            };
                            if probe.resolve_dir(&dest, false, &mut h).is_ok() {
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                }
                self.remove(&dest);
                self.nodes.insert(dest, node);
                Ok(())
            }
        }
    }
}

fn tar_of(ops: &[Op]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for op in ops {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        let (path, data): (String, Vec<u8>) = match op {
            Op::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                (p.clone(), vec![])
            }
            Op::File(p, c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(1);
                (p.clone(), vec![*c])
            }
            Op::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(t).unwrap();
                (p.clone(), vec![])
            }
            Op::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(t).unwrap();
                (p.clone(), vec![])
            }
            Op::Whiteout(p) => {
                let (d, n) = Model::split(p);
                h.set_entry_type(tar::EntryType::Regular);
                (join(d, &format!(".wh.{n}")), vec![])
            }
            Op::Opaque(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                (join(p, ".wh..wh..opq"), vec![])
            }
        };
        h.set_path(&path).unwrap();
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every entry under `dir` (not following symlinks), as the model describes them.
fn read_tree(dir: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ft = e.file_type();
        let node = if ft.is_symlink() {
            Node::Link(
                String::from_utf8(
                    std::fs::read_link(e.path())
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
                .unwrap(),
            )
        } else if ft.is_dir() {
            Node::Dir
        } else {
            Node::File(std::fs::read(e.path()).unwrap())
        };
        out.insert(rel, node);
    }
    out
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_string)
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(name(), 1..4).prop_map(|v| v.join("/"))
}

fn op(canary: String) -> impl Strategy<Value = Op> {
    let target = prop_oneof![
        Just("/".to_string()),
        Just(canary.clone()),
        Just(format!("{canary}/keep")),
        Just("../../../../canary".to_string()),
        Just("..".to_string()),
        Just("../a".to_string()),
        path(),
        path().prop_map(|p| format!("/{p}")),
    ];
    prop_oneof![
        path().prop_map(Op::Dir),
        (path(), any::<u8>()).prop_map(|(p, c)| Op::File(p, c)),
        (path(), target).prop_map(|(p, t)| Op::Symlink(p, t)),
        (path(), path()).prop_map(|(p, t)| Op::Hardlink(p, t)),
        path().prop_map(Op::Whiteout),
        path().prop_map(Op::Opaque),
    ]
}

/// A fixed place for the canary, so generated symlinks can name it absolutely.
fn canary_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("imgbuild-canary-{}", std::process::id()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_layers_stay_in_the_root_and_match_the_reference(
        layers in prop::collection::vec(
            prop::collection::vec(op(canary_dir().to_string_lossy().into_owned()), 1..12),
            1..4,
        )
    ) {
        let canary = canary_dir();
        std::fs::create_dir_all(&canary).unwrap();
        std::fs::write(canary.join("keep"), b"canary").unwrap();
        let before = read_tree(&canary);
        let t = tempfile::tempdir().unwrap();
        let root_dir = t.path().join("root");
        std::fs::create_dir(&root_dir).unwrap();
        let root = Root::open(&root_dir).unwrap();
        let mut model = Model { nodes: BTreeMap::new() };
        let mut failed = false;
        for layer in &layers {
            let real = apply(&root, &tar_of(layer)[..], 1);
            let mut expected = Ok(());
            for op in layer {
                expected = model.apply(op);
                if expected.is_err() {
                    break;
                }
            }
            prop_assert_eq!(read_tree(&canary), before.clone(), "the canary changed");
            match (real, expected) {
                (Ok(()), Ok(())) => {}
                (Err(_), Err(_)) => { failed = true; break; }
                (r, e) => prop_assert!(false, "applier {:?}, reference {:?}", r, e),
            }
        }
        if !failed {
            prop_assert_eq!(read_tree(&root_dir), model.nodes);
        }
        prop_assert!(!t.path().join("canary").exists());
    }
}
