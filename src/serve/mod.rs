//! What every `concur serve` model is written with: everything that is not "the
//! concurrency", so two model files differ only in how they wait.
//!
//! Every model in `src/models/` has the same signature
//! ([`crate::models::ModelFn`]): it gets a bound, non-blocking listener, the
//! [`ServeConfig`], a [`Shutdown`] handle and a [`Ready`] to announce with, and serves
//! until shutdown. This is plumbing: it names no model and does not import the
//! registry. The command line (`serve_cmd`), which sits above the registry, reads
//! what it must know about the chosen model from its row (whether `--offload`
//! applies, the default `--workers`, SO_REUSEPORT, a kernel check) and hands the
//! model a checked `ServeConfig`: plain data.
//!
//! - [`listener`]: binding (SO_REUSEADDR, backlog 1024) and the errors a user can fix.
//! - [`shutdown`]: SIGINT/SIGTERM as a self-pipe every model can wait on.
//! - [`accept`]: the accept loop's shared rules: `--max-conns`, back-off when accept
//!   fails with EMFILE/ENFILE, per-connection log lines.
//! - [`blocking_conn`]: one client served with blocking calls, for the models that
//!   give each client a thread or process of its own.
//! - [`conn`]: one client's state for event loops: its session and its bounded
//!   buffer of unsent replies; `drive()` for edge-triggered loops.
//! - [`offload`]: `--offload`, the worker pool event loops hand fib to, and the
//!   eventfd mailbox that wakes them with the replies.
//!
//! Adding a model is described in [`crate::models`]: a file and a registry row.

pub mod accept;
pub mod blocking_conn;
pub mod conn;
pub mod lifecycle;
pub mod listener;
pub mod offload;
pub mod shutdown;
pub mod supervise;

pub use shutdown::Shutdown;

use crate::protocol::ServiceSpec;
use anyhow::{Context, Result};
use std::cell::Cell;
use std::io::Write;
use std::time::Duration;

/// Bytes taken per read (the talk reads 10000).
pub const READ_SIZE: usize = 16 * 1024;

/// How long a closing connection discards input while its FIN reaches the client:
/// closing with unread input would send RST, which can destroy the last replies.
pub const LINGER: Duration = Duration::from_secs(2);

/// How long replies already owed may take to drain after SIGINT/SIGTERM.
pub const GRACE: Duration = Duration::from_secs(3);

/// Everything a model needs to know, checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub service: ServiceSpec,
    /// `--workers`; what it sizes depends on the model ([`crate::models::Workers`]),
    /// and on an event loop it is also the `--offload` pool's size.
    pub workers: usize,
    pub max_conns: usize,
    /// Close a connection after this long without input (or stuck writing).
    pub idle_timeout: Option<Duration>,
    /// How long replies already owed may take after SIGINT/SIGTERM.
    pub grace: Duration,
    /// Event loops hand fib to a pool of `workers` threads (`--offload`).
    pub offload: bool,
    /// `--fork`: the `workers` event loops run as forked processes (only for a
    /// model whose row says `fork_loops`).
    pub fork: bool,
}

/// The "listening on ADDR model=M service=S" line on stdout, which scripts, the
/// lab and the tests wait for. A model writes it with [`Ready::announce`] once it
/// has set up everything that could fail (threads, worker processes, listeners,
/// rings, the offload pool): the line promises that the server serves. An error
/// before it exits 2 with one line ("could not start"), and no line is printed.
pub struct Ready<'a> {
    line: String,
    announced: &'a Cell<bool>,
}

impl<'a> Ready<'a> {
    /// The line to print, and the flag that records whether it was (the caller,
    /// `concur serve`, reads it to tell a model that could not start from one that
    /// failed while serving).
    pub fn new(line: String, announced: &'a Cell<bool>) -> Ready<'a> {
        Ready { line, announced }
    }

    /// Print the line (once; later calls do nothing).
    pub fn announce(&self) -> Result<()> {
        if self.announced.replace(true) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", self.line)
            .and_then(|()| out.flush())
            .context("writing the listening line to stdout")
    }
}

/// The worker pool for `--offload`, if asked for (`--workers` threads).
pub fn offload_pool(cfg: &ServeConfig) -> Result<Option<offload::Pool>> {
    if !cfg.offload {
        return Ok(None);
    }
    offload::Pool::new(cfg.workers)
        .map(Some)
        .context("starting the offload worker threads")
}

/// The talk's per-connection log lines, shared so every model prints the same.
pub fn log_open(addr: &std::net::SocketAddr) {
    tracing::info!("Connection from {addr}");
}

/// See [`log_open`].
pub fn log_closed(addr: &std::net::SocketAddr) {
    tracing::info!("Connection from {addr} closed");
}

/// Log a connection's I/O error: at debug if routine, else as a warning.
pub fn log_io_error(addr: &std::net::SocketAddr, err: &std::io::Error) {
    if is_routine(err) {
        tracing::debug!("{addr}: {err}");
    } else {
        tracing::warn!("{addr}: {err}");
    }
}

/// Whether an I/O error is a client's routine misbehaviour (reset, broken pipe,
/// timeout) rather than something worth a warning.
pub fn is_routine(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionReset
            | ConnectionAborted
            | BrokenPipe
            | NotConnected
            | TimedOut
            | WouldBlock
            | UnexpectedEof
    ) || err.raw_os_error() == Some(libc::ETIMEDOUT)
}
