//! Will `--max-conns` fit? Every connection an event loop (or a thread per client)
//! holds is a descriptor of the server's one process, and a process may open at most
//! RLIMIT_NOFILE of them: `concur serve` raises its soft limit to the hard one, and
//! only a privileged process may go further (on this machine the hard limit is
//! 20,000, and root may not raise it). Past the limit accept() fails with EMFILE and
//! new clients wait in the backlog ([`crate::serve::accept`] backs off and retries),
//! so a `--max-conns` the process cannot reach would be found out at the 20,000th
//! client. The server says so at start instead, in one line naming the limit and the
//! flag that lifts it, and still starts (the default `--max-conns` is 10,000, and a
//! lower target is the user's to choose).
//!
//! What lifts it is more processes: `--fork` runs the event loops as processes, each
//! with its own descriptor table and limit (nginx's `worker_processes`), so N workers
//! hold about N times as many. The kernel spreads connections over the workers'
//! listeners by a hash, near evenly but not exactly, so the number to pick is a
//! floor: connections wanted / (limit - [`SPARE_FDS`]), rounded up.
//!
//! The forking models (`processes`, `prefork`) are not checked: their clients'
//! descriptors are spread over their children.

use crate::models::{ModelInfo, names_where};
use crate::serve::ServeConfig;
use crate::sys::{SPARE_FDS, processes_for};

/// `None` if `cfg.max_conns` fits under the descriptor limit `limit` (per process),
/// else the one-line warning: the limit, and the flag that lifts it.
pub fn check(model: &ModelInfo, cfg: &ServeConfig, limit: u64) -> Option<String> {
    if model.forks {
        return None;
    }
    let processes = if cfg.fork { cfg.workers as u64 } else { 1 };
    let room = limit.saturating_sub(SPARE_FDS);
    let max = cfg.max_conns;
    if max as u64 <= room.saturating_mul(processes) {
        return None;
    }
    let need = processes_for(max as u64, limit);
    Some(if cfg.fork {
        format!(
            "--max-conns {max} does not fit in {processes} worker processes of {limit} \
             descriptors each (RLIMIT_NOFILE): use --workers {need} or more"
        )
    } else if model.fork_loops {
        format!(
            "--max-conns {max} does not fit in one process (RLIMIT_NOFILE: {limit} \
             descriptors): past about {room} connections new clients wait; add --fork \
             --workers {need}, or lower --max-conns"
        )
    } else {
        format!(
            "--max-conns {max} does not fit in one process (RLIMIT_NOFILE: {limit} \
             descriptors): past about {room} connections new clients wait; lower \
             --max-conns, or use --fork with {}",
            names_where(|m| m.fork_loops)
        )
    })
}

/// `--fork`'s help: what it does, which models take it, how to pick `--workers`.
pub fn fork_help() -> String {
    format!(
        "Run the --workers event loops as forked processes instead of threads ({}), \
         each with its own descriptor limit; the parent only supervises (replaces a \
         dead worker, passes on SIGTERM). Pick --workers as connections wanted / \
         (per-process descriptor limit, `ulimit -Hn`, minus {SPARE_FDS}), rounded up: \
         100000 over a 20000 limit needs --workers 6. --max-conns counts the whole \
         server; with --offload each process has its own pool of --workers threads",
        names_where(|m| m.fork_loops)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{REGISTRY, by_name};
    use crate::protocol::ServiceSpec;

    fn cfg(max_conns: usize, workers: usize, fork: bool) -> ServeConfig {
        ServeConfig {
            service: ServiceSpec::Fib { max_n: 30 },
            workers,
            max_conns,
            idle_timeout: None,
            grace: crate::serve::GRACE,
            offload: false,
            fork,
        }
    }

    #[test]
    fn what_fits_is_silent() {
        let reuseport = by_name("reuseport").unwrap();
        assert_eq!(check(reuseport, &cfg(10_000, 2, false), 20_000), None);
        assert_eq!(check(reuseport, &cfg(20_000 - 64, 1, false), 20_000), None);
        assert_eq!(check(reuseport, &cfg(100_000, 6, true), 20_000), None);
    }

    #[test]
    fn what_does_not_fit_names_the_limit_and_the_flag() {
        for m in REGISTRY.iter().filter(|m| !m.forks) {
            let w = check(m, &cfg(20_000, 2, false), 20_000).unwrap();
            assert!(w.contains("RLIMIT_NOFILE: 20000"), "{}: {w}", m.name);
            assert!(w.contains("--fork"), "{}: {w}", m.name);
            if m.fork_loops {
                assert!(w.contains("--fork --workers 2"), "{w}");
            }
        }
        let reuseport = by_name("reuseport").unwrap();
        let w = check(reuseport, &cfg(100_000, 5, true), 20_000).unwrap();
        assert!(w.contains("--workers 6 or more"), "{w}");
    }

    #[test]
    fn forking_models_are_not_checked() {
        for m in REGISTRY.iter().filter(|m| m.forks) {
            assert_eq!(
                check(m, &cfg(1_000_000, 2, false), 1024),
                None,
                "{}",
                m.name
            );
        }
    }
}
