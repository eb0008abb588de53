//! The lab's progress, for a person in front of a terminal and for one reading a log.
//!
//! A full run lasts minutes. In a terminal a bar redraws in place; when stderr is not a
//! terminal (`nohup`, CI, a pipe) a bar would be invisible or garbage, so each step is
//! one log line instead: what runs now, how far the run is, and an estimate of the time
//! left. Steps differ by four orders of magnitude (a 250 ms load run, a million
//! connections held), so each comes with the time the plan expects of it, and the
//! estimate is the expected time left scaled by the run's pace so far: elapsed x
//! (expected left / expected done). `--quiet` silences both.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::{Duration, Instant};

enum Shown {
    Bar(ProgressBar),
    Lines,
    Nothing,
}

/// Progress over a known list of steps.
pub struct Progress {
    shown: Shown,
    /// What each step is expected to take, seconds (see the module doc).
    expected: Vec<f64>,
    total: u64,
    done: u64,
    started: Instant,
}

impl Progress {
    /// A bar on a terminal, log lines elsewhere, nothing with `--quiet`; one step per
    /// entry of `expected`, the time the plan expects it to take.
    pub fn new(expected: Vec<f64>) -> Progress {
        let total = expected.len() as u64;
        let shown = if crate::logging::quiet() {
            Shown::Nothing
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Shown::Bar(bar)
        } else {
            Shown::Lines
        };
        Progress {
            shown,
            expected,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// One step begins: name it.
    pub fn step(&mut self, what: &str) {
        let line = self.line(what);
        self.done = (self.done + 1).min(self.total);
        match &self.shown {
            Shown::Bar(bar) => {
                bar.set_message(what.to_string());
                bar.inc(1);
            }
            Shown::Lines => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Shown::Nothing => {}
        }
    }

    /// Steps that will not run (a server that did not start, or failed verification).
    pub fn skip(&mut self, n: usize) {
        self.done = (self.done + n as u64).min(self.total);
        if let Shown::Bar(bar) = &self.shown {
            bar.inc(n as u64);
        }
    }

    pub fn finish(&self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }

    /// `lab [13/80] 0:42 elapsed, about 3:36 left: echo: epoll conns=10 size=64`.
    fn line(&self, what: &str) -> String {
        let elapsed = self.started.elapsed();
        let left = match estimate_left(elapsed, &self.expected, self.done as usize) {
            None => "estimating the time left".to_string(),
            Some(left) => format!("about {} left", clock(left)),
        };
        format!(
            "lab [{}/{}] {} elapsed, {left}: {what}",
            self.done + 1,
            self.total,
            clock(elapsed)
        )
    }
}

/// The time left after `done` of the `expected` steps took `elapsed`: what is left
/// of the plan, at the pace the run has kept so far. `None` before any step is done.
pub fn estimate_left(elapsed: Duration, expected: &[f64], done: usize) -> Option<Duration> {
    let done = done.min(expected.len());
    let (past, left) = expected.split_at(done);
    let past: f64 = past.iter().sum();
    let left: f64 = left.iter().sum();
    (past > 0.0).then(|| Duration::from_secs_f64(elapsed.as_secs_f64() * left / past))
}

/// 83 s -> "1:23", 3725 s -> "1:02:05".
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_says_what_runs_how_far_and_what_is_left() {
        let mut p = Progress {
            shown: Shown::Nothing,
            expected: vec![1.0; 4],
            total: 4,
            done: 0,
            started: Instant::now(),
        };
        let first = p.line("cpu: concur fib");
        assert!(
            first.starts_with("lab [1/4] 0:00 elapsed, estimating"),
            "{first}"
        );
        p.step("cpu: concur fib");
        p.skip(1);
        let third = p.line("echo: epoll");
        assert!(third.starts_with("lab [3/4]"), "{third}");
        assert!(third.contains("left: echo: epoll"), "{third}");
        p.skip(10);
        assert_eq!(p.done, 4, "never past the total");
    }

    #[test]
    fn clock_times() {
        assert_eq!(clock(Duration::from_secs(83)), "1:23");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
