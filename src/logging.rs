//! Logs go to stderr through `tracing`, so stdout stays for results a script reads.
//! `-v` turns on per-connection lines (info), `-vv` debug; `RUST_LOG` overrides both.
//! `--quiet` (for scripts) keeps only errors, whatever `-v` says.
//!
//! Colour only on a terminal, and never when `NO_COLOR` is set to anything but the
//! empty string (<https://no-color.org>), as clap's help already behaves.

use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: from now on log only errors (and the lab draws no progress bar).
pub fn set_quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Whether `--quiet` was given: the lab's progress bar checks this.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether to colour output going to a stream: only a terminal, and not under `NO_COLOR`.
pub fn use_color(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Install the stderr logger once; later calls do nothing.
pub fn init(verbosity: u8) {
    let level = match (quiet(), verbosity) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = use_color(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::use_color;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(
            use_color(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }
}
