//! The talk's servers, one file each, and [`REGISTRY`]: the one list of them.
//!
//! Every model has the same signature, [`ModelFn`]: it gets a bound, non-blocking
//! listener, the [`ServeConfig`], a [`Shutdown`] handle and a [`Ready`] it calls
//! once set up (threads, workers, rings, pools: whatever could still fail), and
//! serves until shutdown. A model file holds only its concurrency; everything else (accepting,
//! `--max-conns`, a client's session, shutdown) is plumbing in [`crate::serve`],
//! which names no model.
//!
//! What differs between models in ways the rest of the program must know, whether
//! `--offload` applies, whether it forks, how many clients it serves at once, is
//! written down once, as facts in its [`ModelInfo`] row. `concur serve` reads the
//! row to parse `--model`, pick the default `--workers`, refuse `--offload` and
//! check the kernel; `concur lab` reads it to choose experiments; `concur models`
//! prints it for scripts (`benches/models.sh`); and the tests in `tests/serve.rs`
//! run their whole suite over every row, deriving from the facts what each model
//! should do (a bounded pool starves a client behind idle ones; an event loop
//! does not).
//!
//! Adding a model: write `src/models/NAME.rs` with `pub fn run(listener, cfg,
//! shutdown)` and add its row to [`REGISTRY`]. Nothing else names it.

pub mod async_;
pub mod blocking;
pub mod epoll;
pub mod prefork;
pub mod processes;
pub mod reuseport;
pub mod select;
pub mod threadpool;
pub mod threads;
pub mod uring;

use crate::error::bad_input;
use crate::serve::{Ready, ServeConfig, Shutdown};
use anyhow::Result;
use std::net::TcpListener;

/// The signature every model implements.
pub type ModelFn = fn(TcpListener, &ServeConfig, Shutdown, Ready<'_>) -> Result<()>;

/// What bounds how many clients a model serves at once: its nature, before
/// `--max-conns` (which every model also obeys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceiling {
    /// One client at a time; the rest wait in the listen backlog.
    One,
    /// `--workers` clients at once (a fixed pool of threads or processes, each
    /// serving one client); the rest wait, in a queue or the listen backlog.
    Workers,
    /// A thread per client: [`crate::sys::thread_ceiling`].
    Threads,
    /// A process per client: as many as the machine can fork.
    Processes,
    /// select(2) cannot watch a descriptor >= FD_SETSIZE (1024): such clients are
    /// refused.
    FdSetSize,
    /// Only the descriptor limit: an idle client costs a few hundred bytes.
    Descriptors,
}

impl Ceiling {
    /// The word `concur models` prints.
    pub fn name(self) -> &'static str {
        match self {
            Ceiling::One => "one",
            Ceiling::Workers => "workers",
            Ceiling::Threads => "threads",
            Ceiling::Processes => "processes",
            Ceiling::FdSetSize => "fd_setsize",
            Ceiling::Descriptors => "descriptors",
        }
    }
}

/// What `--workers` sizes in a model, besides the `--offload` pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// Nothing: one thread, or a thread or process per client.
    Unused,
    /// Event-loop threads, each serving many clients (default: one per core).
    Loops,
    /// Threads or processes each serving one client at a time (default: 8 per
    /// core, since a silent client holds one until `--idle-timeout`).
    Pool,
}

/// A kernel feature a model needs beyond what every Linux has.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// What it is called in the error ("io_uring").
    pub feature: &'static str,
    /// Whether this kernel lets us use it; the error says why not.
    pub available: fn() -> std::io::Result<()>,
}

/// One model and the facts about it the rest of the program depends on.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// The name `--model` takes.
    pub name: &'static str,
    /// One line: what it is (shown by `--help` and `concur models`).
    pub about: &'static str,
    /// The function that runs it.
    pub run: ModelFn,
    /// A readiness or completion loop serving many clients per thread: fib runs
    /// inline there (one long fib stalls the loop) unless `--offload`.
    pub event_loop: bool,
    /// Serves clients in forked child processes.
    pub forks: bool,
    /// What bounds the clients it serves at once.
    pub ceiling: Ceiling,
    /// What `--workers` sizes.
    pub workers: Workers,
    /// Its listener is bound with SO_REUSEPORT, so it can bind more on the address.
    pub reuse_port: bool,
    /// `--fork` runs its `--workers` event loops as forked processes instead of
    /// threads, each with its own descriptor table (nginx's `worker_processes`), so
    /// the connections it holds are no longer bounded by one process's descriptors.
    pub fork_loops: bool,
    /// A kernel feature it needs, checked before it starts.
    pub requires: Option<Requirement>,
}

impl ModelInfo {
    /// Serves exactly one client at a time (the rest wait in the backlog).
    pub fn one_at_a_time(&self) -> bool {
        self.ceiling == Ceiling::One
    }

    /// How many clients it serves at once with `workers` workers, if a fixed
    /// number: 1 one at a time, `workers` for a bounded pool; `None` when only
    /// memory and descriptors bound it (or, for select, FD_SETSIZE).
    pub fn served_at_once(&self, workers: usize) -> Option<usize> {
        match self.ceiling {
            Ceiling::One => Some(1),
            Ceiling::Workers => Some(workers),
            _ => None,
        }
    }

    /// `--workers` when not given: one per core, 8 per core for a pool.
    pub fn default_workers(&self) -> usize {
        let per_core = if self.workers == Workers::Pool { 8 } else { 1 };
        per_core * crate::sys::cores()
    }

    /// Whether this kernel can run the model (concur is Linux-only: what it checks is
    /// a feature some Linux kernels lack); the error is the user's to fix.
    pub fn check(&self) -> Result<()> {
        if let Some(req) = self.requires
            && let Err(e) = (req.available)()
        {
            return Err(bad_input(format!(
                "{} is not available on this kernel: {e}",
                req.feature
            )));
        }
        Ok(())
    }
}

/// Every model, in the order the talk reaches them and the lab reports them.
pub static REGISTRY: &[ModelInfo] = &[
    ModelInfo {
        name: "blocking",
        about: "the talk's first server: one thread, one client at a time",
        run: blocking::run,
        event_loop: false,
        forks: false,
        ceiling: Ceiling::One,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "threads",
        about: "a new OS thread per client (the talk's option 1)",
        run: threads::run,
        event_loop: false,
        forks: false,
        ceiling: Ceiling::Threads,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "processes",
        about: "fork() a child process per client (the talk's option 2)",
        run: processes::run,
        event_loop: false,
        forks: true,
        ceiling: Ceiling::Processes,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "select",
        about: "one thread, a select(2) readiness loop (the talk's option 3)",
        run: select::run,
        event_loop: true,
        forks: false,
        ceiling: Ceiling::FdSetSize,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "async",
        about: "tokio, the asyncio of Rust: one task per client on --workers threads",
        run: async_::run,
        event_loop: true,
        forks: false,
        ceiling: Ceiling::Descriptors,
        workers: Workers::Loops,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "epoll",
        about: "one thread, an edge-triggered epoll readiness loop (via mio)",
        run: epoll::run,
        event_loop: true,
        forks: false,
        ceiling: Ceiling::Descriptors,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "threadpool",
        about: "a fixed pool of --workers threads serving clients from a bounded queue",
        run: threadpool::run,
        event_loop: false,
        forks: false,
        ceiling: Ceiling::Workers,
        workers: Workers::Pool,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "reuseport",
        about: "--workers epoll loops, each on its own SO_REUSEPORT listener (nginx)",
        run: reuseport::run,
        event_loop: true,
        forks: false,
        ceiling: Ceiling::Descriptors,
        workers: Workers::Loops,
        reuse_port: true,
        fork_loops: true,
        requires: None,
    },
    ModelInfo {
        name: "prefork",
        about: "--workers pre-forked processes accepting on the shared listener (Apache)",
        run: prefork::run,
        event_loop: false,
        forks: true,
        ceiling: Ceiling::Workers,
        workers: Workers::Pool,
        reuse_port: false,
        fork_loops: false,
        requires: None,
    },
    ModelInfo {
        name: "uring",
        about: "one thread, a completion loop on io_uring (Linux's IOCP)",
        run: uring::run,
        event_loop: true,
        forks: false,
        ceiling: Ceiling::Descriptors,
        workers: Workers::Unused,
        reuse_port: false,
        fork_loops: false,
        requires: Some(Requirement {
            feature: "io_uring",
            available: uring::available,
        }),
    },
];

/// The row for `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static ModelInfo> {
    REGISTRY.iter().find(|m| m.name == name)
}

/// The names of the models with a fact, comma-separated (for messages and help).
pub fn names_where(fact: impl Fn(&ModelInfo) -> bool) -> String {
    REGISTRY
        .iter()
        .filter(|m| fact(m))
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--model`'s parser: the registry's names (listed in `--help`, and in the error
/// for any other word), giving the row.
pub fn value_parser() -> impl clap::builder::TypedValueParser<Value = &'static ModelInfo> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        REGISTRY
            .iter()
            .map(|m| PossibleValue::new(m.name).help(m.about)),
    )
    .map(|name| by_name(&name).expect("the parser accepts only registry names"))
}

/// The columns `concur models` prints, in order.
pub const TABLE_COLUMNS: [&str; 8] = [
    "model",
    "event_loop",
    "forks",
    "fork_loops",
    "one_at_a_time",
    "ceiling",
    "default_workers",
    "about",
];

/// `concur models`: the registry as a table, one model per line, columns separated
/// by runs of spaces (the last, `about`, is free text). Scripts find a column by
/// its header.
pub fn render_table() -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<[String; TABLE_COLUMNS.len()]> = vec![TABLE_COLUMNS.map(String::from)];
    for m in REGISTRY {
        rows.push([
            m.name.to_string(),
            yes(m.event_loop).to_string(),
            yes(m.forks).to_string(),
            yes(m.fork_loops).to_string(),
            yes(m.one_at_a_time()).to_string(),
            m.ceiling.name().to_string(),
            m.default_workers().to_string(),
            m.about.to_string(),
        ]);
    }
    let last = TABLE_COLUMNS.len() - 1;
    let widths: Vec<usize> = (0..last)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (c, cell) in row.iter().enumerate() {
            if c < last {
                out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_to_their_row() {
        use clap::builder::TypedValueParser;
        let cmd = clap::Command::new("t");
        for m in REGISTRY {
            assert_eq!(
                REGISTRY.iter().filter(|o| o.name == m.name).count(),
                1,
                "{}",
                m.name
            );
            let parsed = value_parser()
                .parse_ref(&cmd, None, std::ffi::OsStr::new(m.name))
                .unwrap();
            assert_eq!(parsed.name, m.name);
        }
        assert!(
            value_parser()
                .parse_ref(&cmd, None, std::ffi::OsStr::new("fibers"))
                .is_err()
        );
    }

    #[test]
    fn facts_agree_with_each_other() {
        for m in REGISTRY {
            // A loop serves many clients per thread, so it is never bounded by a
            // thread or process per client, nor serves one at a time.
            if m.event_loop {
                assert!(!m.forks && !m.one_at_a_time(), "{}", m.name);
                assert!(
                    matches!(m.ceiling, Ceiling::Descriptors | Ceiling::FdSetSize),
                    "{}",
                    m.name
                );
            }
            if m.ceiling == Ceiling::Processes {
                assert!(m.forks, "{}", m.name);
            }
            // A pool of workers each serving one client is what bounds it.
            assert_eq!(
                m.workers == Workers::Pool,
                m.ceiling == Ceiling::Workers,
                "{}",
                m.name
            );
            assert!(m.workers != Workers::Loops || m.event_loop, "{}", m.name);
            // --fork turns the loops --workers counts into processes.
            if m.fork_loops {
                assert!(m.workers == Workers::Loops && !m.forks, "{}", m.name);
            }
            assert_eq!(
                m.served_at_once(5).is_some(),
                matches!(m.ceiling, Ceiling::One | Ceiling::Workers)
            );
        }
    }

    #[test]
    fn table_has_a_header_and_a_line_per_model() {
        let table = render_table();
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, TABLE_COLUMNS);
        let names: Vec<&str> = lines
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        let want: Vec<&str> = REGISTRY.iter().map(|m| m.name).collect();
        assert_eq!(names, want);
    }
}
