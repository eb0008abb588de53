//! The scaling experiment's ladder: 1k, 10k, 100k and 1M held connections (all by
//! default, `--conns-max` to stop lower), and for each server, before each rung,
//! whether the rung can fit at all.
//!
//! A rung that cannot fit is not started: waiting for it to fail would cost a full
//! hold (minutes at 100k), a server that falls over in a way that says little, and a
//! report whose reason is a symptom ("opened 19,936 of 100,000") instead of the cause.
//! What decides it is known beforehand: the server's nature (the registry's facts for
//! concur's models, declared ones for the Python peers: what bounds the clients it
//! serves at once, whether it holds them in one process, whether `--fork` spreads its
//! loops over processes) and the machine's limits (descriptors per process,
//! FD_SETSIZE, the thread and process ceilings, memory available now). [`decide`] is
//! a pure function of those, so its verdicts are unit tests; the experiment reads the
//! limits and runs the rung or records the reason in words, with the arithmetic.
//!
//! Ports do not bind on loopback: `concur hold` spreads its connections over source
//! addresses in 127.0.0.0/8 (9,881 each here, so a million take 102 of its 16
//! million), and the report says how many it used.
//!
//! A user's server has no declared nature: it climbs until a rung falls short, and
//! only memory is checked before.

use crate::hold::{CLIENT_BYTES_PER_CONN, KERNEL_BYTES_PER_CONN, SERVER_BYTES_PER_CONN};
use crate::lab::fmt::grouped;
use crate::models::Ceiling;
use crate::sys::{SPARE_FDS, processes_for};

/// The rungs of the full ladder.
pub const RUNGS: [u32; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// The rungs of `--quick`: a small one every server that serves many clients at once
/// passes, and one past FD_SETSIZE, so the quick run shows a rung decided beforehand.
pub const QUICK_RUNGS: [u32; 2] = [200, 2_000];

/// The default top of the full ladder: all of it. Measured here (2 cores, shared with
/// another benchmark): the full lab's experiments took 7 min 40 s with the ladder
/// stopped at 100,000 (that rung 10 s: six event-loop processes, a hold of six), and
/// the million rung 2 min 52 s more (56 worker processes, a hold of 51, 10.2 GB of
/// kernel memory): about 10.5 minutes, under the 15 the lab is allowed. Where memory
/// is short the ladder skips the rung and says so; `--conns-max 100000` stops lower.
pub const DEFAULT_CONNS_MAX: u32 = 1_000_000;

/// select(2) watches descriptors below FD_SETSIZE only.
pub const FD_SETSIZE: u64 = 1024;

/// Descriptors a select server holds besides its clients (standard streams, the
/// listener, the shutdown pipe, a few more); its clients' descriptors start above them.
pub const SELECT_RESERVED: u64 = 16;

/// The rungs a run climbs: `base`'s rungs below `conns_max`, then `conns_max` itself
/// unless it is above the last (so `--conns-max 50000` climbs 1k, 10k, 50k).
pub fn rungs(base: &[u32], conns_max: u32) -> Vec<u32> {
    let mut list: Vec<u32> = base.iter().copied().filter(|&n| n < conns_max).collect();
    let top = base.last().copied().unwrap_or(conns_max).min(conns_max);
    if list.last() != Some(&top) {
        list.push(top);
    }
    list
}

/// What the lab knows of a server before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nature {
    /// What bounds the clients it serves at once; `None` for a user's server (not known).
    pub ceiling: Option<Ceiling>,
    /// It holds every connection in one process, so one process's descriptors bound it.
    pub one_process: bool,
    /// `--fork --workers N` runs its event loops as N processes (`fork_loops`).
    pub fork_loops: bool,
    /// For a pool (`Ceiling::Workers`): its default workers per core it may run on.
    pub pool_per_core: usize,
}

impl Nature {
    /// A server the lab knows nothing about: only the machine's limits apply.
    pub const UNKNOWN: Nature = Nature {
        ceiling: None,
        one_process: false,
        fork_loops: false,
        pool_per_core: 0,
    };

    /// A concur model's nature, from its registry row.
    pub fn of_model(info: &crate::models::ModelInfo) -> Nature {
        Nature {
            ceiling: Some(info.ceiling),
            one_process: !info.forks,
            fork_loops: info.fork_loops,
            pool_per_core: info.default_workers() / crate::sys::cores().max(1),
        }
    }
}

/// The machine's limits the ladder checks, read before each rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Descriptors one process may open (RLIMIT_NOFILE, raised as far as it goes).
    pub fd_limit: u64,
    /// Threads one process may start ([`crate::sys::thread_ceiling`]).
    pub thread_ceiling: u64,
    /// Process ids the kernel gives out (the least of `kernel.pid_max` and
    /// `kernel.threads-max`).
    pub process_ceiling: u64,
    /// The cores a server may run on (1 when the lab pins it).
    pub server_cores: usize,
    /// MemAvailable now, bytes; `None` where /proc/meminfo cannot be read.
    pub mem_available: Option<u64>,
}

impl Limits {
    /// Read this machine's limits (the descriptor limit is this process's, already
    /// raised: the servers and clients the lab starts inherit it).
    pub fn read(fd_limit: u64, pinned: bool) -> Limits {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let pids = read("/proc/sys/kernel/pid_max").unwrap_or(u64::MAX);
        let threads = read("/proc/sys/kernel/threads-max").unwrap_or(u64::MAX);
        Limits {
            fd_limit,
            thread_ceiling: crate::sys::thread_ceiling() as u64,
            process_ceiling: pids.min(threads),
            server_cores: if pinned { 1 } else { crate::sys::cores() },
            mem_available: crate::sys::KernelMemory::read().map(|k| k.mem_available_bytes),
        }
    }
}

/// What the rung below measured of this server, bytes per held connection.
///
/// Only the server's user space: it is what differs by orders of magnitude between
/// servers (a few hundred bytes for an event loop, a megabyte for a process per
/// connection). The kernel's growth is read machine-wide, so at a small rung anything
/// else the machine does shows in it; the estimate stays hold's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// The server's user-space growth (private memory over its process tree).
    pub server: Option<u64>,
}

/// A rung's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it; `fork_workers`: as this many event-loop processes (`--fork`).
    Run { fork_workers: Option<u64> },
    /// Do not start it, and why, in words with the arithmetic.
    Skip(String),
}

/// The event-loop processes that hold `n` connections under a per-process limit: one
/// per `limit - SPARE_FDS` descriptors, with a tenth more because SO_REUSEPORT spreads
/// connections by a hash, not evenly (as `tests/c40k.rs` does); two at least.
pub fn fork_workers(n: u64, fd_limit: u64) -> u64 {
    processes_for(n * 10 / 9, fd_limit).max(2)
}

/// Whether `n` held connections can fit, decided before starting the rung.
///
/// In order: the server's nature (one client at a time, a fixed pool, FD_SETSIZE,
/// a thread or a process per connection), one process's descriptors (a forking
/// event loop spreads over processes instead), memory.
pub fn decide(nature: &Nature, n: u32, limits: &Limits, measured: &Measured) -> Decision {
    let n64 = u64::from(n);
    let conns = grouped(n64);
    let skip = Decision::Skip;
    match nature.ceiling {
        Some(Ceiling::One) => {
            return skip(format!(
                "it serves one client at a time: of {conns} connections held at once, every \
                 one but the first would wait for its answer until another left"
            ));
        }
        Some(Ceiling::Workers) => {
            let pool = (nature.pool_per_core * limits.server_cores.max(1)) as u64;
            if n64 > pool {
                return skip(format!(
                    "it serves at most {pool} clients at once (a pool of {} per core, on {} \
                     core{}): of {conns} held at once, {} would wait for their answer",
                    nature.pool_per_core,
                    limits.server_cores,
                    if limits.server_cores == 1 { "" } else { "s" },
                    grouped(n64 - pool)
                ));
            }
        }
        Some(Ceiling::FdSetSize) if n64 + SELECT_RESERVED > FD_SETSIZE => {
            return skip(format!(
                "select(2) watches only descriptors below FD_SETSIZE ({FD_SETSIZE}): \
                 {conns} connections need descriptors up to about {}",
                grouped(n64 + SELECT_RESERVED)
            ));
        }
        Some(Ceiling::Threads) if n64 > limits.thread_ceiling => {
            return skip(format!(
                "a thread per connection: it needs {conns} threads in one process, and this \
                 machine's thread ceiling is {} (the least of vm.max_map_count / 5 mappings \
                 per thread, threads-max / 2 and pid_max / 2)",
                grouped(limits.thread_ceiling)
            ));
        }
        Some(Ceiling::Processes) if n64 >= limits.process_ceiling => {
            return skip(format!(
                "a process per connection: it needs {conns} processes, and the kernel gives \
                 out at most {} process ids (pid_max, threads-max)",
                grouped(limits.process_ceiling)
            ));
        }
        _ => {}
    }
    let mut fork = None;
    let needs = n64 + SPARE_FDS;
    if nature.one_process && needs > limits.fd_limit {
        if nature.fork_loops {
            fork = Some(fork_workers(n64, limits.fd_limit));
        } else {
            return skip(format!(
                "it needs {} descriptors in one process ({conns} connections and {SPARE_FDS} \
                 for everything else), and the limit is {}",
                grouped(needs),
                grouped(limits.fd_limit)
            ));
        }
    }
    if let Some(available) = limits.mem_available {
        // hold's estimate (cost.rs), with the server's as measured below where more.
        let server = measured.server.unwrap_or(0).max(SERVER_BYTES_PER_CONN);
        let per = KERNEL_BYTES_PER_CONN + CLIENT_BYTES_PER_CONN + server;
        let need = n64.saturating_mul(per);
        if need > available {
            let how = if server > SERVER_BYTES_PER_CONN {
                "as measured at the rung below"
            } else {
                "at least, as in an event loop"
            };
            return skip(format!(
                "memory: {conns} connections need about {:.1} GB ({} B each: {} B in the \
                 kernel for both ends, {CLIENT_BYTES_PER_CONN} B in the client, {} B in the \
                 server, {how}), and {:.1} GB is available",
                need as f64 / 1e9,
                grouped(per),
                grouped(KERNEL_BYTES_PER_CONN),
                grouped(server),
                available as f64 / 1e9
            ));
        }
    }
    Decision::Run { fork_workers: fork }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::by_name;

    /// This machine's kind: 20,000 descriptors, 13,106 threads, pid_max 32,768, the
    /// server pinned to one core, 24 GB available.
    fn limits() -> Limits {
        Limits {
            fd_limit: 20_000,
            thread_ceiling: 13_106,
            process_ceiling: 32_768,
            server_cores: 1,
            mem_available: Some(24_000_000_000),
        }
    }

    /// A model's nature from its registry row, with its pool's workers per core fixed
    /// (the registry computes it from this machine's cores).
    fn model(name: &str) -> Nature {
        let info = by_name(name).unwrap();
        Nature {
            pool_per_core: 8,
            ..Nature::of_model(info)
        }
    }

    fn run(d: &Decision) -> bool {
        matches!(d, Decision::Run { fork_workers: None })
    }

    fn reason(d: Decision) -> String {
        match d {
            Decision::Skip(why) => why,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn the_ladder_stops_at_conns_max() {
        assert_eq!(rungs(&RUNGS, DEFAULT_CONNS_MAX), RUNGS);
        assert_eq!(rungs(&RUNGS, 100_000), [1_000, 10_000, 100_000]);
        assert_eq!(rungs(&RUNGS, 50_000), [1_000, 10_000, 50_000]);
        assert_eq!(rungs(&RUNGS, 500), [500]);
        assert_eq!(rungs(&QUICK_RUNGS, DEFAULT_CONNS_MAX), QUICK_RUNGS);
        assert_eq!(rungs(&QUICK_RUNGS, 1_000), [200, 1_000]);
    }

    #[test]
    fn one_at_a_time_and_pools_stop_before_the_first_rung() {
        let l = limits();
        let m = Measured::default();
        let why = reason(decide(&model("blocking"), 200, &l, &m));
        assert!(why.contains("one client at a time"), "{why}");
        let pool = reason(decide(&model("threadpool"), 1_000, &l, &m));
        assert!(pool.contains("at most 8 clients at once"), "{pool}");
        assert!(pool.contains("992 would wait"), "{pool}");
        // Unpinned on 4 cores: a pool of 32 holds 20.
        let wide = Limits {
            server_cores: 4,
            ..l
        };
        assert!(run(&decide(&model("prefork"), 20, &wide, &m)));
    }

    #[test]
    fn select_stops_at_fd_setsize() {
        let (l, m) = (limits(), Measured::default());
        assert!(run(&decide(&model("select"), 1_000, &l, &m)));
        let why = reason(decide(&model("select"), 2_000, &l, &m));
        assert!(why.contains("below FD_SETSIZE (1024)"), "{why}");
        assert!(why.contains("up to about 2,016"), "{why}");
    }

    #[test]
    fn threads_and_processes_stop_at_their_ceilings() {
        let (l, m) = (limits(), Measured::default());
        assert!(run(&decide(&model("threads"), 10_000, &l, &m)));
        let why = reason(decide(&model("threads"), 100_000, &l, &m));
        assert!(why.contains("thread ceiling is 13,106"), "{why}");
        assert!(run(&decide(&model("processes"), 10_000, &l, &m)));
        let why = reason(decide(&model("processes"), 100_000, &l, &m));
        assert!(why.contains("at most 32,768 process ids"), "{why}");
    }

    #[test]
    fn one_process_loops_stop_at_the_descriptor_limit_and_forking_loops_spread() {
        let (l, m) = (limits(), Measured::default());
        for name in ["epoll", "async", "uring"] {
            assert!(run(&decide(&model(name), 10_000, &l, &m)), "{name}");
            let why = reason(decide(&model(name), 100_000, &l, &m));
            assert_eq!(
                why,
                "it needs 100,064 descriptors in one process (100,000 connections and 64 for \
                 everything else), and the limit is 20,000",
                "{name}"
            );
        }
        // reuseport: one process while it fits, then worker processes, with a margin.
        assert!(run(&decide(&model("reuseport"), 10_000, &l, &m)));
        assert_eq!(
            decide(&model("reuseport"), 100_000, &l, &m),
            Decision::Run {
                fork_workers: Some(6)
            }
        );
        assert_eq!(
            decide(&model("reuseport"), 1_000_000, &l, &m),
            Decision::Run {
                fork_workers: Some(56)
            }
        );
        // Just past one process: two, each with room to spare.
        assert_eq!(fork_workers(19_990, 20_000), 2);
    }

    #[test]
    fn memory_is_checked_with_the_arithmetic_and_what_a_rung_below_measured() {
        let m = Measured::default();
        let tight = Limits {
            mem_available: Some(5_000_000_000),
            ..limits()
        };
        // 1M x (10,240 + 256 + 512) B = 11.0 GB > 5 GB.
        let why = reason(decide(&model("reuseport"), 1_000_000, &tight, &m));
        assert_eq!(
            why,
            "memory: 1,000,000 connections need about 11.0 GB (11,008 B each: 10,240 B in the \
             kernel for both ends, 256 B in the client, 512 B in the server, at least, as in \
             an event loop), and 5.0 GB is available"
        );
        assert!(run(&decide(&model("epoll"), 10_000, &tight, &m)));
        // A process per connection that measured 400 KB each at 1k: 10k do not fit in 3 GB.
        let small = Limits {
            mem_available: Some(3_000_000_000),
            ..limits()
        };
        let heavy = Measured {
            server: Some(400_000),
        };
        let why = reason(decide(&model("processes"), 10_000, &small, &heavy));
        assert!(
            why.starts_with("memory: 10,000 connections need about 4.1 GB (410,496 B each"),
            "{why}"
        );
        assert!(
            why.contains("400,000 B in the server, as measured at the rung below"),
            "{why}"
        );
        assert!(run(&decide(&model("processes"), 10_000, &small, &m)));
        // Nothing to read: not checked.
        let unknown = Limits {
            mem_available: None,
            ..small
        };
        assert!(run(&decide(&model("processes"), 10_000, &unknown, &heavy)));
    }

    #[test]
    fn a_users_server_is_checked_only_against_memory() {
        let m = Measured::default();
        let l = limits();
        assert!(run(&decide(&Nature::UNKNOWN, 100_000, &l, &m)));
        assert!(run(&decide(&Nature::UNKNOWN, 1_000_000, &l, &m)));
        let tight = Limits {
            mem_available: Some(1_000_000_000),
            ..l
        };
        assert!(reason(decide(&Nature::UNKNOWN, 1_000_000, &tight, &m)).starts_with("memory:"));
    }
}
