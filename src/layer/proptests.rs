//! Property tests of the layer core: random trees archive deterministically (any thread
//! count, either compression) and read back to exactly the tree.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use proptest::prelude::*;

use super::Compression;
use super::walk::{WalkOptions, append_tree};
use super::{CompressionSpec, LayerWriter};
use crate::cache::{BlobWriter, LayerRecord};

#[derive(Debug, Clone)]
enum Entry {
    File(Vec<u8>, u32),
    Link(String),
}

fn tree() -> impl Strategy<Value = BTreeMap<String, Entry>> {
    let name = "[a-z]{1,8}(/[a-z]{1,8}){0,3}";
    let content = prop::collection::vec(any::<u8>(), 0..3000);
    let entry = prop_oneof![
        (
            content,
            prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o4755])
        )
            .prop_map(|(c, m)| Entry::File(c, m)),
        "[a-z./]{1,20}".prop_map(Entry::Link),
    ];
    prop::collection::btree_map(name, entry, 1..25)
}

/// Writes the tree; names that collide with a file used as a directory are skipped.
fn materialize(root: &Path, t: &BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    let mut made = BTreeMap::new();
    for (name, e) in t {
        let p = root.join(name);
        if p.parent().is_some_and(|d| fs::create_dir_all(d).is_err())
            || p.exists()
            || p.is_symlink()
        {
            continue;
        }
        match e {
            Entry::File(c, m) => {
                fs::write(&p, c).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
            }
            Entry::Link(target) => symlink(target, &p).unwrap(),
        }
        made.insert(name.clone(), e.clone());
    }
    made
}

fn build(root: &Path, out: &Path, algorithm: Compression, threads: usize) -> LayerRecord {
    let spec = CompressionSpec::new(algorithm, None).with_threads(threads);
    let blob = BlobWriter::create(out, out).unwrap();
    let mut w = LayerWriter::to_blob(blob, spec, 0).unwrap();
    append_tree(
        &mut w,
        root,
        WalkOptions {
            owner: Some((0, 0)),
        },
    )
    .unwrap();
    w.finish(String::new()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_trees_are_deterministic_and_round_trip(t in tree()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let made = materialize(&root, &t);
        for algorithm in [Compression::Gzip, Compression::Zstd] {
            let a = build(&root, dir.path(), algorithm, 1);
            let b = build(&root, dir.path(), algorithm, 2);
            prop_assert_eq!(&a, &b);

            let blob = fs::File::open(dir.path().join(a.digest.hex())).unwrap();
            let reader: Box<dyn Read> = match algorithm {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
                Compression::Zstd => Box::new(zstd::Decoder::new(blob).unwrap()),
            };
            let mut ar = tar::Archive::new(reader);
            let mut seen = BTreeMap::new();
            let mut last = Vec::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                prop_assert!(last <= path || path.starts_with(&last), "walk order");
                last = path.clone();
                prop_assert_eq!(e.header().mtime().unwrap(), 0);
                prop_assert_eq!(e.header().uid().unwrap(), 0);
                let name = String::from_utf8(path).unwrap().trim_end_matches('/').to_string();
                match e.header().entry_type() {
                    tar::EntryType::Regular => {
                        let mut c = Vec::new();
                        e.read_to_end(&mut c).unwrap();
                        seen.insert(name, Entry::File(c, e.header().mode().unwrap()));
                    }
                    tar::EntryType::Symlink => {
                        let l = e.link_name_bytes().unwrap().into_owned();
                        seen.insert(name, Entry::Link(String::from_utf8(l).unwrap()));
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(format!("{made:?}"), format!("{seen:?}"));
        }
    }
}
