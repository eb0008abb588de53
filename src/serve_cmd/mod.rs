//! `concur serve` on the command line: its options ([`ServeArgs`]), checked against the
//! chosen model's row in [`crate::models::REGISTRY`] into a [`ServeConfig`], the
//! start-up warning when `--max-conns` cannot fit under the descriptor limit ([`fit`]),
//! and [`run`]: bind, announce, serve until SIGINT/SIGTERM, stop.
//!
//! Three layers, each importing only the ones below it. The plumbing every model is
//! written with ([`crate::serve`]: listeners, accepting, connections, shutdown, the
//! offload pool, `ServeConfig` and `Ready`) names no model; the registry
//! ([`crate::models`]) names every model file and the facts about each; and this
//! module, on top, is the only one that reads a model's facts to turn a command line
//! into a server: whether `--offload` and `--fork` apply, the default `--workers`,
//! SO_REUSEPORT, a kernel check. What it hands the model, a [`ServeConfig`], is plain
//! data that names no model, so the plumbing never needs the registry.

pub mod fit;

use crate::error::bad_input;
use crate::models::ModelInfo;
use crate::protocol::{DEFAULT_MAX_N, ServiceSpec, echo::DEFAULT_PREFIX};
use crate::serve::{GRACE, Ready, ServeConfig, Shutdown, listener};
use anyhow::{Context, Result};
use std::cell::Cell;
use std::time::Duration;

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

/// [`ServeConfig`] is the plumbing's (every model receives one); it is made here, where
/// the chosen model's row is known.
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
    let limit = crate::sys::raise_fd_limit().or_else(|e| {
        tracing::warn!("cannot raise the descriptor limit: {e}");
        crate::sys::fd_limit()
    });
    if let Some(warning) = limit.ok().and_then(|limit| fit::check(model, &cfg, limit)) {
        tracing::warn!("{warning}");
    }
    let shutdown = Shutdown::install().context("installing SIGINT/SIGTERM handlers")?;
    let listener = listener::bind_with(&args.addr, model.reuse_port)?;
    let local = listener.local_addr().context("reading the bound address")?;
    let announced = Cell::new(false);
    let ready = Ready::new(
        format!(
            "listening on {local} model={} service={}",
            model.name,
            cfg.service.name()
        ),
        &announced,
    );
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
