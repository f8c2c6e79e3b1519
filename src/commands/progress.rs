//! Progress display: indicatif bars on a terminal, plain lines for logs, nothing with --quiet.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use imgbuild::report::{Event, Reporter};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Global, ProgressMode};

pub enum Mode {
    Quiet,
    Plain,
    Bars {
        multi: MultiProgress,
        downloads: Mutex<HashMap<String, ProgressBar>>,
    },
}

/// The command line's reporter; it also times each step (shown when the step is done).
pub struct Progress {
    mode: Mode,
    step_started: Mutex<Instant>,
}

impl Progress {
    pub fn new(g: &Global) -> Self {
        Progress {
            mode: Mode::new(g),
            step_started: Mutex::new(Instant::now()),
        }
    }

    /// A line of chatter on stderr (suppressed by --quiet).
    pub fn line(&self, s: &str) {
        self.mode.line(s)
    }
}

impl Mode {
    fn new(g: &Global) -> Self {
        if g.quiet {
            return Mode::Quiet;
        }
        let tty = match g.progress {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Tty => true,
            ProgressMode::Plain => false,
        };
        if tty {
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                downloads: Mutex::default(),
            }
        } else {
            Mode::Plain
        }
    }

    /// A line of chatter on stderr (suppressed by --quiet).
    fn line(&self, s: &str) {
        match self {
            Mode::Quiet => {}
            Mode::Plain => errln!("{s}"),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(s);
            }
        }
    }
}

impl Reporter for Progress {
    fn report(&self, event: Event<'_>) {
        match &event {
            Event::StepStart { .. } => {
                if let Ok(mut t) = self.step_started.lock() {
                    *t = Instant::now();
                }
            }
            Event::StepDone {
                index,
                name,
                hit,
                digest,
                size,
            } => {
                let took = self
                    .step_started
                    .lock()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                let how = if *hit { "cached" } else { "built " };
                self.mode.line(&format!(
                    "[{:>2}] {how} {} {:>10} {:>7.1}s  {name}",
                    index + 1,
                    digest.short(),
                    HumanBytes(*size).to_string(),
                    took.as_secs_f64()
                ));
                return;
            }
            _ => {}
        }
        self.mode.report(event)
    }
}

impl Mode {
    fn report(&self, event: Event<'_>) {
        match (self, event) {
            (Mode::Quiet, _) => {}
            (_, Event::Stage(s)) => self.line(&format!("==> {s}")),
            (_, Event::Warning(w)) => self.line(&format!("warning: {w}")),
            (_, Event::StepStart { .. }) => {}
            (_, Event::StepDone { .. }) => {}
            (Mode::Plain, Event::TransferStart { dir, url, total }) => {
                let size = total
                    .map(|t| format!(" ({})", HumanBytes(t)))
                    .unwrap_or_default();
                errln!("{} {url}{size}", dir.verb(false));
            }
            (Mode::Plain, Event::TransferDone { dir, url, bytes }) => {
                errln!("{} {url} ({})", dir.verb(true), HumanBytes(bytes))
            }
            (Mode::Plain, Event::TransferProgress { .. }) => {}
            (Mode::Bars { multi, downloads }, Event::TransferStart { url, total, .. }) => {
                let pb = multi.add(ProgressBar::new(total.unwrap_or(0)));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{msg:40!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb.set_message(url.to_string());
                if let Ok(mut d) = downloads.lock() {
                    d.insert(url.to_string(), pb);
                }
            }
            (Mode::Bars { downloads, .. }, Event::TransferProgress { url, bytes, .. }) => {
                if let Some(pb) = downloads.lock().ok().and_then(|d| d.get(url).cloned()) {
                    pb.set_position(bytes);
                }
            }
            (Mode::Bars { downloads, .. }, Event::TransferDone { url, .. }) => {
                if let Some(pb) = downloads.lock().ok().and_then(|mut d| d.remove(url)) {
                    pb.finish_and_clear();
                }
            }
        }
    }
}
