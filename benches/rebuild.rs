//! No-op rebuild of the example recipe, through the real executable: with a warm cache every
//! step hits, so this measures start-up, recipe loading, planning (hashing the inputs), cache
//! lookups with blob verification, and the layout write-out. Target: well under 100 ms.
//!
//! Run: `cargo bench --bench rebuild`

#[path = "../tests/support/http.rs"]
mod http;

use std::path::Path;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};

fn imgbuild(cache: &Path, url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env("IMGBUILD_CACHE", cache)
        .args(["--quiet", "--var", &format!("fixtures={url}")]);
    c
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

fn noop_rebuild(c: &mut Criterion) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = http::FileServer::start(repo.join("fixtures/downloads"));
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo.join("recipes"), &work.path().join("recipes"));
    let recipe = work.path().join("recipes/hello.toml");
    let cache = work.path().join("cache");
    let out = work.path().join("out");
    let build = || {
        let o = imgbuild(&cache, &server.url)
            .arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run imgbuild");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    build(); // warm the cache
    c.bench_function("noop_rebuild_hello", |b| b.iter(build));
    c.bench_function("plan_hello", |b| {
        b.iter(|| {
            let o = imgbuild(&cache, &server.url)
                .arg("plan")
                .arg(&recipe)
                .output()
                .expect("run imgbuild");
            assert!(o.status.success());
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = noop_rebuild
}
criterion_main!(benches);
