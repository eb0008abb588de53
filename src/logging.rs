//! Logs go to stderr through `tracing`, so stdout stays for results a script reads.
//! `-v` turns on per-connection lines (info), `-vv` debug; `RUST_LOG` overrides both.

use tracing_subscriber::EnvFilter;

/// Install the stderr logger once; later calls do nothing.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
