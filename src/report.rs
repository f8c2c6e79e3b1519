//! Progress reporting: library code sends [`Event`]s to a [`Reporter`] and never prints.
//! The command line decides how to show them (bars, plain lines, nothing).

use crate::digest::Digest;

/// Something worth telling the user while a build runs.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A step starts: `index` of `total`.
    StepStart {
        index: usize,
        total: usize,
        name: &'a str,
    },
    /// A step finished, from the cache (`hit`) or built.
    StepDone {
        index: usize,
        name: &'a str,
        hit: bool,
        digest: &'a Digest,
        size: u64,
    },
    /// A transfer starts (a download, a pull or a push of a blob); `total` when known.
    TransferStart {
        dir: Dir,
        url: &'a str,
        total: Option<u64>,
    },
    /// Bytes moved so far.
    TransferProgress {
        dir: Dir,
        url: &'a str,
        bytes: u64,
    },
    TransferDone {
        dir: Dir,
        url: &'a str,
        bytes: u64,
    },
    /// A non-fatal problem.
    Warning(&'a str),
    /// A stage of the pipeline (resolving the base, writing the layout...).
    Stage(&'a str),
}

/// Which way bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Down,
    Up,
}

impl Dir {
    /// "downloading" / "uploading", "downloaded" / "uploaded".
    pub fn verb(self, done: bool) -> &'static str {
        match (self, done) {
            (Dir::Down, false) => "downloading",
            (Dir::Down, true) => "downloaded",
            (Dir::Up, false) => "uploading",
            (Dir::Up, true) => "uploaded",
        }
    }
}

/// Receives events; implementations must be usable from several download threads.
pub trait Reporter: Sync {
    fn report(&self, event: Event<'_>);
}

/// Drops every event (for `--quiet`, tests and benchmarks).
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: Event<'_>) {}
}

/// Forwards events to another reporter and counts the bytes moved each way (for reports).
pub struct Counting<'a> {
    inner: &'a dyn Reporter,
    down: std::sync::atomic::AtomicU64,
    up: std::sync::atomic::AtomicU64,
    built: std::sync::atomic::AtomicU64,
}

impl<'a> Counting<'a> {
    pub fn new(inner: &'a dyn Reporter) -> Self {
        Counting {
            inner,
            down: Default::default(),
            up: Default::default(),
            built: Default::default(),
        }
    }

    /// Bytes downloaded and uploaded so far, and steps built (not from the cache).
    pub fn totals(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.down.load(Relaxed),
            self.up.load(Relaxed),
            self.built.load(Relaxed),
        )
    }
}

impl Reporter for Counting<'_> {
    fn report(&self, event: Event<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        match &event {
            Event::TransferDone {
                dir: Dir::Down,
                bytes,
                ..
            } => {
                self.down.fetch_add(*bytes, Relaxed);
            }
            Event::TransferDone {
                dir: Dir::Up,
                bytes,
                ..
            } => {
                self.up.fetch_add(*bytes, Relaxed);
            }
            Event::StepDone { hit: false, .. } => {
                self.built.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        self.inner.report(event);
    }
}
