//! `concur serve`: the talk's servers behind one command.
//!
//! Every model in `src/models/` has the same signature
//! ([`crate::models::ModelFn`]): it gets a bound, non-blocking listener, the
//! [`ServeConfig`] and a [`Shutdown`] handle, and serves until shutdown. Everything
//! that is not "the concurrency" lives here, so two model files differ only in how
//! they wait. This is plumbing: it names no model; what it must know about one
//! (whether `--offload` applies, the default `--workers`, SO_REUSEPORT, a kernel
//! check) it reads from the model's row in [`crate::models::REGISTRY`].
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
pub mod fit;
pub mod lifecycle;
pub mod listener;
pub mod offload;
pub mod shutdown;
pub mod supervise;

pub use shutdown::Shutdown;

use crate::error::bad_input;
use crate::models::ModelInfo;
use crate::protocol::{DEFAULT_MAX_N, ServiceSpec, echo::DEFAULT_PREFIX};
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

/// The fib service's default `--idle-timeout`, in seconds.
pub const FIB_IDLE_TIMEOUT_SECS: f64 = 60.0;

/// Which service the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The talk's echo: every read answered with PREFIX + data.
    Echo,
    /// One decimal n per line (or ended by '?'), answered with fib(n).
    Fib,
}

/// `concur serve` options. Scripts and `concur lab` depend on these names.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Concurrency model (`concur models` lists them with their facts)
    #[arg(long, value_parser = crate::models::value_parser())]
    pub model: &'static ModelInfo,
    /// Service to speak
    #[arg(long, value_enum)]
    pub service: Service,
    /// Address to listen on; port 0 picks a free port. Use `0.0.0.0:25000` (IPv4) or
    /// `[::]:25000` (IPv6) to listen on every interface, as the talk's ('', 25000) does
    #[arg(long, default_value = "127.0.0.1:25000")]
    pub addr: String,
    #[arg(long, help = workers_help())]
    pub workers: Option<usize>,
    #[arg(long, help = fit::fork_help())]
    pub fork: bool,
    /// Echo reply prefix; --prefix '' gives plain echo (RFC 862)
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Largest n the fib service computes; larger n get `ERR n out of range`. The
    /// default, 42, holds a core about 0.6 s per request; at most 50, the largest n
    /// concur computes (fib(50) holds a core about 30 s)
    #[arg(long, default_value_t = DEFAULT_MAX_N)]
    pub max_n: u32,
    /// Past this many open connections, new clients are closed at once
    #[arg(long, default_value_t = 10_000)]
    pub max_conns: usize,
    /// Close connections silent this long: 60s, 500ms, 2m, or plain seconds (2.5);
    /// 0 = never [default: off for echo, as in the talk; 60s for fib]
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_timeout)]
    pub idle_timeout: Option<Duration>,
    #[arg(long, help = offload_help())]
    pub offload: bool,
    /// -v logs each connection (the talk's "Connection from ..."), -vv debug
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The longest `--idle-timeout` (about 11.6 days).
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(1_000_000);

/// `--idle-timeout`: a duration written as `load` and `hold` write theirs (`5s`,
/// `500ms`, `2m`: [`crate::load::parse_duration`]), or a plain number of seconds,
/// which is what this option took first and what `0` (off) reads most naturally as.
pub fn parse_idle_timeout(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let plain = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = if plain {
        let secs: f64 = t.parse().map_err(|_| {
            format!("'{text}' is not a duration; write e.g. 60s, 500ms, or plain seconds")
        })?;
        Duration::try_from_secs_f64(secs).map_err(|_| format!("'{text}' is too long"))?
    } else {
        crate::load::parse_duration(t)?
    };
    if d > MAX_IDLE_TIMEOUT {
        return Err(format!(
            "'{text}' is too long; at most {}s",
            MAX_IDLE_TIMEOUT.as_secs()
        ));
    }
    Ok(d)
}

/// `--workers`' help, naming the models it applies to from the registry.
fn workers_help() -> String {
    use crate::models::{Workers, names_where};
    let pools = names_where(|m| m.workers == Workers::Pool);
    format!(
        "Threads (or processes) for the models with a fixed number: the pools serving \
         one client per worker ({pools}), the event loops run on several threads ({}), \
         and the --offload pool [default: number of cores; 8 per core for {pools}]",
        names_where(|m| m.workers == Workers::Loops),
    )
}

/// `--offload`'s help, naming the event loops from the registry.
fn offload_help() -> String {
    format!(
        "Event-loop models ({}): compute fib on a pool of --workers threads instead \
         of inline, so other clients keep being served; replies on a connection stay \
         in request order",
        crate::models::names_where(|m| m.event_loop)
    )
}

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

impl ServeConfig {
    /// Check the arguments; every error is the user's to fix.
    pub fn from_args(args: &ServeArgs) -> Result<ServeConfig> {
        let service = match args.service {
            Service::Echo => ServiceSpec::Echo {
                prefix: args.prefix.as_bytes().to_vec(),
            },
            Service::Fib => ServiceSpec::Fib { max_n: args.max_n },
        };
        if args.max_n > crate::fib::MAX_N {
            return Err(bad_input(format!(
                "--max-n {} is too large; at most {} (fib({}) holds a core for about 30 s)",
                args.max_n,
                crate::fib::MAX_N,
                crate::fib::MAX_N
            )));
        }
        let workers = match args.workers {
            Some(0) => return Err(bad_input("--workers must be at least 1")),
            Some(n) => n,
            None => args.model.default_workers(),
        };
        if args.max_conns == 0 {
            return Err(bad_input("--max-conns must be at least 1"));
        }
        let idle = args.idle_timeout.unwrap_or(match args.service {
            Service::Echo => Duration::ZERO,
            Service::Fib => Duration::from_secs_f64(FIB_IDLE_TIMEOUT_SECS),
        });
        let idle_timeout = (!idle.is_zero()).then_some(idle);
        if args.offload && !args.model.event_loop {
            return Err(bad_input(format!(
                "--offload is for event-loop models ({}); {} already computes fib off \
                 the accept loop",
                crate::models::names_where(|m| m.event_loop),
                args.model.name
            )));
        }
        if args.fork && !args.model.fork_loops {
            return Err(bad_input(format!(
                "--fork is for models whose event loops can run as processes ({}), not {}",
                crate::models::names_where(|m| m.fork_loops),
                args.model.name
            )));
        }
        Ok(ServeConfig {
            service,
            workers,
            max_conns: args.max_conns,
            idle_timeout,
            grace: GRACE,
            offload: args.offload,
            fork: args.fork,
        })
    }
}

/// `concur serve`: check, bind, announce, serve until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    crate::logging::init(args.verbose);
    let model = args.model;
    let cfg = ServeConfig::from_args(args)?;
    model.check()?;
    if let Err(e) = crate::sys::raise_fd_limit() {
        tracing::warn!("cannot raise the descriptor limit: {e}");
    }
    if let Some(warning) = fit::fd_limit().and_then(|limit| fit::check(model, &cfg, limit)) {
        tracing::warn!("{warning}");
    }
    let shutdown = Shutdown::install().context("installing SIGINT/SIGTERM handlers")?;
    let listener = listener::bind_with(&args.addr, model.reuse_port)?;
    let local = listener.local_addr().context("reading the bound address")?;
    let announced = Cell::new(false);
    let ready = Ready {
        line: format!(
            "listening on {local} model={} service={}",
            model.name,
            cfg.service.name()
        ),
        announced: &announced,
    };
    match (model.run)(listener, &cfg, shutdown, ready) {
        Ok(()) => {}
        // Nothing was served yet: the user sees why it could not start, exit 2.
        Err(e) if !announced.get() => {
            return Err(crate::error::bad_input(format!(
                "model {} could not start: {e:#}",
                model.name
            )));
        }
        Err(e) => return Err(e),
    }
    tracing::info!("stopped");
    Ok(())
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

impl Ready<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<ServeConfig> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?;
        ServeConfig::from_args(&cli.serve)
    }

    #[test]
    fn every_registry_model_is_accepted() {
        for m in crate::models::REGISTRY {
            let cli = Cli::try_parse_from(["serve", "--model", m.name, "--service", "echo"]);
            assert_eq!(cli.unwrap().serve.model.name, m.name);
            let cfg = config(&["--model", m.name, "--service", "echo"]).unwrap();
            assert_eq!(cfg.workers, m.default_workers(), "{}", m.name);
            let offload = config(&["--model", m.name, "--service", "fib", "--offload"]);
            assert_eq!(offload.is_ok(), m.event_loop, "{}", m.name);
            let fork = config(&["--model", m.name, "--service", "echo", "--fork"]);
            match fork {
                Ok(cfg) => assert!(m.fork_loops && cfg.fork, "{}", m.name),
                Err(e) => {
                    assert!(!m.fork_loops, "{}: {e}", m.name);
                    assert_eq!(crate::error::exit_code(&e), 2, "{}", m.name);
                }
            }
        }
    }

    #[test]
    fn defaults() {
        let echo = config(&["--model", "threads", "--service", "echo"]).unwrap();
        assert_eq!(
            echo.idle_timeout, None,
            "echo idles forever, as in the talk"
        );
        assert_eq!(echo.max_conns, 10_000);
        assert_eq!(echo.workers, crate::sys::cores());
        assert_eq!(
            echo.service,
            ServiceSpec::Echo {
                prefix: b"Received: ".to_vec()
            }
        );
        let fib = config(&["--model", "async", "--service", "fib"]).unwrap();
        assert_eq!(fib.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            fib.service,
            ServiceSpec::Fib {
                max_n: DEFAULT_MAX_N
            }
        );
    }

    #[test]
    fn idle_timeout_zero_is_off() {
        let fib = config(&[
            "--model",
            "select",
            "--service",
            "fib",
            "--idle-timeout",
            "0",
        ]);
        assert_eq!(fib.unwrap().idle_timeout, None);
        let echo = config(&[
            "--model",
            "select",
            "--service",
            "echo",
            "--idle-timeout",
            "2.5",
        ]);
        assert_eq!(
            echo.unwrap().idle_timeout,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn bad_values_are_bad_input() {
        for args in [
            &["--model", "async", "--service", "fib", "--workers", "0"][..],
            &["--model", "async", "--service", "fib", "--max-conns", "0"],
            &["--model", "async", "--service", "fib", "--max-n", "99"],
            &["--model", "threads", "--service", "fib", "--offload"],
            &["--model", "blocking", "--service", "echo", "--offload"],
        ] {
            let err = config(args).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn idle_timeout_takes_load_durations_and_plain_seconds() {
        let ok = |t: &str| parse_idle_timeout(t).unwrap();
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("5"), Duration::from_secs(5));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        for bad in ["-1", "nan", "", "5x", "1e9", "1000001", "12d"] {
            assert!(parse_idle_timeout(bad).is_err(), "{bad}");
        }
        // Through clap too, as `concur serve` parses it.
        let cli = Cli::try_parse_from([
            "serve",
            "--model",
            "epoll",
            "--service",
            "echo",
            "--idle-timeout",
            "750ms",
        ])
        .unwrap();
        let cfg = ServeConfig::from_args(&cli.serve).unwrap();
        assert_eq!(cfg.idle_timeout, Some(Duration::from_millis(750)));
    }
}
