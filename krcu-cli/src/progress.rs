//! Progress of long runs: an `indicatif` bar on a terminal, plain lines
//! (at most one a second) when standard error is not a terminal. Always on
//! standard error, so standard output stays the result alone.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A progress report over `total` steps.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    last_line: Option<Instant>,
    quiet: bool,
}

impl Progress {
    /// A new report; `quiet` shows nothing at all.
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            last_line: None,
            quiet,
        }
    }

    /// Sets how far along it is, with a note of what runs now.
    pub fn set(&mut self, done: u64, msg: &str) {
        self.done = done.min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            bar.set_message(msg.to_string());
            return;
        }
        if self.quiet {
            return;
        }
        let due = self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || self.done == self.total {
            self.last_line = Some(Instant::now());
            eprintln!("krcu: {} {}/{} {msg}", self.label, self.done, self.total);
        }
    }

    /// One more step done.
    pub fn step(&mut self, msg: &str) {
        self.set(self.done + 1, msg);
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Waits `d`, showing a time bar (in tenths of a second) labelled `label`.
pub fn wait(label: &str, d: Duration, quiet: bool) {
    let tenths = (d.as_millis() / 100).max(1) as u64;
    let mut p = Progress::new(label, tenths, quiet || d < Duration::from_millis(1500));
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= d {
            break;
        }
        let left = d - elapsed;
        std::thread::sleep(left.min(Duration::from_millis(100)));
        p.set(
            (start.elapsed().as_millis() / 100) as u64,
            &format!(
                "{:.0} s left",
                d.saturating_sub(start.elapsed()).as_secs_f64()
            ),
        );
    }
    p.finish();
}
