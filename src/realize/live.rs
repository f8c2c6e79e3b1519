//! The build's one materialized root: the image so far, unpacked once into the sandbox work
//! directory and moved forward step by step. A step that runs programs (dpkg's configure,
//! pip, build packages, `[[run]]`) works on it in place; its layer is the difference against
//! a snapshot taken just before. Layers built another way (files, users, package layers) are
//! unpacked onto it before the next step that needs it, so no step unpacks the image again.
//!
//! Snapshot and diff rather than an overlayfs upper directory: the diff needs only a tmpfs
//! and works unprivileged, where an overlay mount needs root (or a user namespace with a
//! kernel that allows it there) and leaves whiteouts as character devices to translate. The
//! snapshot is a `stat` of every path (tens of milliseconds for a 40,000-entry image).
//!
//! After a step the root is what unpacking its layer would have made (see
//! [`super::sandbox::diff`]): regular files it wrote get the build's mtime and entries a layer
//! cannot hold are removed, so a step never sees a difference between a root carried forward
//! and one unpacked from cached layers.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::RealizeError;
use super::sandbox;
use crate::cache::{Cache, LayerRecord};
use crate::digest::Digest;
use crate::layer::LayerWriter;
use crate::plan::{Plan, Step};

/// The root and the layers it holds. Dropping it removes the root after the build returns
/// (see [`remove_detached`]).
#[derive(Default)]
pub struct LiveRoot {
    dir: Option<(PathBuf, Option<tempfile::TempDir>)>,
    /// The digests of the layers unpacked or made in it, in order.
    held: Vec<Digest>,
}

impl LiveRoot {
    /// The root's path, when it holds exactly `layers`.
    pub fn holding(&self, layers: &[LayerRecord]) -> Option<&Path> {
        let same = self.held.len() == layers.len() && self.holds_start_of(layers);
        self.dir.as_ref().filter(|_| same).map(|(p, _)| p.as_path())
    }

    /// Whether the layers it holds are the first ones of `layers`.
    fn holds_start_of(&self, layers: &[LayerRecord]) -> bool {
        self.held.len() <= layers.len() && self.held.iter().zip(layers).all(|(h, l)| *h == l.digest)
    }

    /// Brings the root to `layers`: only the layers after those it holds are unpacked (those
    /// in `independent`, indices into `layers`, concurrently). A root holding anything that
    /// is not a prefix of `layers` is started again.
    pub(super) fn advance(
        &mut self,
        cache: &Cache,
        layers: &[LayerRecord],
        independent: Range<usize>,
        mtime: u64,
    ) -> Result<PathBuf, RealizeError> {
        if !self.holds_start_of(layers) {
            self.reset();
        }
        let root = match &self.dir {
            Some((p, _)) => p.clone(),
            None => {
                let work = sandbox::work_dir(cache);
                sweep(&work);
                let dir = tempfile::Builder::new()
                    .prefix(ROOT_PREFIX)
                    .tempdir_in(&work)
                    .map_err(|source| RealizeError::Layer {
                        step: "unpack the image".into(),
                        source,
                    })?;
                // `IMGBUILD_KEEP_ROOTFS=1` leaves it behind for debugging.
                let (path, guard) = if crate::settings::get().keep_roots {
                    (dir.keep(), None)
                } else {
                    (dir.path().to_path_buf(), Some(dir))
                };
                self.dir = Some((path.clone(), guard));
                path
            }
        };
        let k = self.held.len();
        let shifted = independent.start.saturating_sub(k)..independent.end.saturating_sub(k);
        if let Err(e) = sandbox::materialize_with(cache, &layers[k..], shifted, &root, mtime) {
            self.reset();
            return Err(e.into());
        }
        self.held = layers.iter().map(|l| l.digest.clone()).collect();
        Ok(root)
    }

    /// Forgets the root (a failed step leaves it in no known state) and has it removed.
    pub(super) fn reset(&mut self) {
        if let Some((_, Some(dir))) = self.dir.take() {
            remove_detached(dir);
        }
        self.held.clear();
    }

    /// Brings the root to `layers`, calls `f` on it, and returns what `f` changed as `step`'s
    /// layer; the root then holds that layer too.
    pub fn step(
        &mut self,
        plan: &Plan,
        step: &Step,
        cache: &Cache,
        layers: &[LayerRecord],
        independent: Range<usize>,
        f: impl FnOnce(&Path) -> Result<(), RealizeError>,
    ) -> Result<LayerRecord, RealizeError> {
        let root = self.advance(cache, layers, independent, plan.mtime)?;
        let result = (|| {
            let before = sandbox::snapshot(&root)?;
            f(&root)?;
            sandbox::clean(&root, &before)?;
            let mut w = LayerWriter::new(cache, plan.compression, plan.mtime)?;
            sandbox::diff(&root, &before, &mut w, plan.mtime)?;
            Ok(w.finish(step.name.clone())?)
        })();
        match result {
            Ok(rec) => {
                self.held.push(rec.digest.clone());
                Ok(rec)
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }
}

/// The image's whole root, handed to an output that reads and may change it (the disk).
/// Dropping it removes it like a [`LiveRoot`].
pub struct Flattened {
    path: PathBuf,
    _live: LiveRoot,
}

impl Flattened {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LiveRoot {
    /// Brings the root to `layers` (the whole image) and gives it up to its last user, which
    /// is then free to change it: no step can run on it again.
    pub fn flatten(
        mut self,
        cache: &Cache,
        layers: &[LayerRecord],
        mtime: u64,
    ) -> Result<Flattened, RealizeError> {
        let path = self.advance(cache, layers, 0..0, mtime)?;
        Ok(Flattened { path, _live: self })
    }
}

impl Drop for LiveRoot {
    fn drop(&mut self) {
        self.reset();
    }
}

/// Roots are `rootfs-XXXXXX` in the sandbox work directory; one being removed is renamed
/// `rootfs-trash-XXXXXX` first.
const ROOT_PREFIX: &str = "rootfs-";
const TRASH_PREFIX: &str = "rootfs-trash-";

/// Removes a root without making the build wait for it: renamed to a trash name, then a
/// detached `rm -rf` in its own process group, so the command returns while the tree (50,000
/// entries, 0.3 s on a tmpfs for coderall) goes, and a terminal's Ctrl-C after the build does
/// not cut it short. This is Bazel's asynchronous tree deletion, done with a process because
/// imgbuild does not outlive its command. A removal cut short anyway (systemd stops what a
/// finished oneshot unit left running) is finished by the next build's [`sweep`].
/// `--one-file-system` keeps `rm` off anything mounted inside; a reaper thread collects its
/// exit status while imgbuild still runs (a `rebuild` of many recipes). When `rm` cannot be
/// started, the root is removed in place.
fn remove_detached(dir: tempfile::TempDir) {
    let path = dir.keep();
    let trash = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(ROOT_PREFIX))
        .map(|rest| path.with_file_name(format!("{TRASH_PREFIX}{rest}")));
    let path = match trash {
        Some(t) if std::fs::rename(&path, &t).is_ok() => t,
        _ => path,
    };
    if !spawn_rm(&path) {
        // Nothing to report to: a leftover root in the work directory is all that fails.
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Starts removing the roots in `work` whose removal was cut short.
fn sweep(work: &Path) {
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TRASH_PREFIX))
        {
            spawn_rm(&e.path());
        }
    }
}

/// `rm -rf --one-file-system PATH`, detached; false when it could not be started.
fn spawn_rm(path: &Path) -> bool {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let spawned = Command::new("rm")
        .args(["-rf", "--one-file-system", "--"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Waits (at most 10 s) until `dir` holds exactly `want`.
    fn settles(dir: &Path, want: &[&str]) {
        let start = Instant::now();
        while names(dir) != want {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}",
                names(dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tree(at: &Path) {
        std::fs::create_dir_all(at.join("usr/lib")).unwrap();
        std::fs::write(at.join("usr/lib/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/", at.join("usr/escape")).unwrap();
    }

    #[test]
    fn a_dropped_root_goes_and_a_cut_removal_is_finished_by_the_next_sweep() {
        let work = tempfile::tempdir().unwrap();
        let outside = work.path().join("outside");
        tree(&outside);
        let root = tempfile::Builder::new()
            .prefix(ROOT_PREFIX)
            .tempdir_in(work.path())
            .unwrap();
        tree(root.path());
        std::os::unix::fs::symlink(&outside, root.path().join("link")).unwrap();
        remove_detached(root);
        settles(work.path(), &["outside"]);
        // Symlinks were removed, not followed.
        assert_eq!(names(&outside.join("usr/lib")), ["x"]);

        let cut = work.path().join(format!("{TRASH_PREFIX}abc123"));
        tree(&cut);
        let live = work.path().join(format!("{ROOT_PREFIX}def456"));
        tree(&live);
        sweep(work.path());
        settles(work.path(), &["outside", "rootfs-def456"]);
    }
}
