//! The integration tests: every test drives the real `imgbuild` executable, as a user would,
//! and reads what it wrote with the real tools (skopeo, umoci, GNU tar).

#[path = "../support/fake_proxmox.rs"]
mod fake_proxmox;
#[path = "../support/http.rs"]
mod http;

mod apt;
mod apt_repo;
mod build;
mod distroless;
mod fidelity;
mod oracle;
mod pip;
mod cache;
mod copy;
mod errors;
mod explain;
mod hostile;
mod import;
mod layer;
mod layout;
mod multiarch;
mod network;
mod proxmox;
mod rebuild;
mod registry;
mod rootless;
mod sbom;
mod servers;
mod sign;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use tempfile::TempDir;

pub use http::FileServer;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test workspace: its own cache, a copy of the example recipe, and the fixture server.
pub struct Work {
    pub dir: TempDir,
    pub server: FileServer,
}

impl Work {
    pub fn setup() -> Work {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("recipes"), &dir.path().join("recipes"));
        Work {
            dir,
            server: FileServer::start(repo().join("fixtures/downloads")),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn recipe(&self) -> PathBuf {
        self.path("recipes/hello.toml")
    }

    /// `imgbuild` with this workspace's cache and fixture URL.
    pub fn cmd(&self) -> Command {
        self.cmd_with_cache(&self.path("cache"))
    }

    pub fn cmd_with_cache(&self, cache: &Path) -> Command {
        Command::from_std(self.spawnable(cache))
    }

    /// Like [`Work::cmd_with_cache`], as a std `Command` (to spawn several at once).
    pub fn spawnable(&self, cache: &Path) -> std::process::Command {
        #[allow(deprecated)]
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
        c.current_dir(self.dir.path())
            .env("IMGBUILD_CACHE", cache)
            .env_remove("SOURCE_DATE_EPOCH")
            .args([
                "--progress",
                "plain",
                "--var",
                &format!("fixtures={}", self.server.url),
            ]);
        c
    }

    /// Builds the example into `out` and returns the manifest digest.
    pub fn build(&self, out: &str) -> String {
        let o = self.build_output(out);
        assert_ok(&o);
        stdout(&o).trim().to_string()
    }

    /// Builds the example into `out`, whatever the outcome.
    pub fn build_output(&self, out: &str) -> std::process::Output {
        self.cmd()
            .args(["build"])
            .arg(self.recipe())
            .arg("--out")
            .arg(self.path(out))
            .output()
            .unwrap()
    }
}

impl Work {
    /// Runs `cmd build RECIPE --out OUT --metadata-file` and returns the parsed metadata,
    /// checking that stdout carries its manifest digest.
    pub fn build_metadata(&self, mut cmd: Command, recipe: &Path, out: &str) -> serde_json::Value {
        let meta = self.path(&format!("{}.json", out.replace('/', "-")));
        let o = cmd
            .arg("build")
            .arg(recipe)
            .arg("--out")
            .arg(self.path(out))
            .arg("--metadata-file")
            .arg(&meta)
            .output()
            .unwrap();
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        assert_eq!(
            v["manifest"].as_str().unwrap(),
            stdout(&o).trim(),
            "stdout carries the manifest digest"
        );
        v
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "command failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Runs an external tool, failing the test with its output if it fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for this test (.ci/run installs it): {e}"));
    assert_ok(&o);
    stdout(&o)
}

/// Every `[[run]]` command of the recipe text `recipe` is valid shell (`bash -n`).
pub fn assert_runs_parse(recipe: &str, label: &str) {
    let parsed: toml::Value = toml::from_str(recipe).unwrap();
    for r in parsed
        .get("run")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let cmd = r["command"].as_str().unwrap();
        let o = std::process::Command::new("bash")
            .args(["-n", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{label}: bash -n refuses {cmd:?}: {}",
            stderr(&o)
        );
    }
}
