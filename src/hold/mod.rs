//! `concur hold`: the talk's C10K question, asked directly. Can the server keep N
//! connections open at once, and still answer each one?
//!
//! Three phases, one epoll loop each (`engine`):
//!
//! 1. **Open.** Non-blocking connects, at most `--batch` in progress at a time and no
//!    more than the server's accept queues have room for (when the server is on this
//!    machine, so that its backlog is never flooded into SYN retries), each finished
//!    when epoll reports it writable (`SO_ERROR` says whether it worked). A failed
//!    connect is counted by its errno (`ECONNREFUSED`, `ETIMEDOUT`, ...). The report
//!    gives the open phase's length and its rate, connections per second.
//! 2. **Round trip.** One verified request on every open connection (the same
//!    verifiers as `concur load`), latency per connection into an HDR histogram. At
//!    most `--in-flight` round trips are outstanding at once (default 1): the next
//!    request goes out when an earlier reply is in. Writing all N requests first and
//!    reading the replies after would time mostly this loop's own N writes (tens of
//!    milliseconds at 1,000 connections against a 0.1 ms server); bounded, the figure
//!    is what one client sees while the others are held open. A server that stops
//!    answering must not cost N / `--in-flight` timeouts: once a round trip times out
//!    with no other round trip finished since it was sent, the connections not yet
//!    tried are counted as `not_tried` and the phase ends.
//! 3. **Hold.** Keep everything open for `--duration` (or until the server has closed
//!    every connection: then nothing is left to hold); a connection the server closes
//!    meanwhile is counted. What a connection costs is read meanwhile (`cost`):
//!    given `--server-pid`, the memory (PSS), threads and processes of the server's
//!    whole process tree; and the kernel's slab and TCP buffer memory, which on
//!    loopback holds both ends of every connection and is most of the cost.
//!
//! Limits met on the way, and how they are handled. One process may open only so many
//! descriptors (here 20,000, a hard limit even root cannot raise), so a hold that
//! does not fit in one spreads itself over as many processes as it needs
//! (`spread`): each child holds a share below its own limit and reports on a pipe,
//! and the parent runs the phases across them in order and merges their reports
//! exactly ([`merge_hold`]: counts summed, histograms added). One source address
//! has only ~28k ephemeral ports toward one server, so on loopback connections are
//! spread over 127.0.0.1, 127.0.0.2, ... (`--per-source` each, numbered across all
//! the processes), bound with `IP_BIND_ADDRESS_NO_PORT` so the port is picked at
//! connect time. And memory: before opening, the memory the hold will need is
//! estimated and compared with MemAvailable (`cost::check_memory`).

mod cost;
mod engine;
mod merge;
mod report;
mod spread;

pub use cost::{CLIENT_BYTES_PER_CONN, KERNEL_BYTES_PER_CONN, SERVER_BYTES_PER_CONN};
pub use merge::{HoldMerge, merge_hold};
pub use report::{HoldReport, KernelStats, Rtt, RttErrors, ServerStats, render, rtt_of};

use crate::error::bad_input;
use crate::load::{Service, parse_duration, resolve};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::sys::SPARE_FDS;

/// The most processes a hold spreads over (a guard against a typo forking the
/// machine to death, far above the 51 a million connections need here).
const MAX_PROCESSES: usize = 1024;

/// `concur hold` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// The server, HOST:PORT
    #[arg(long)]
    pub addr: String,
    /// Connections to open and hold at once
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// How long to hold them all open once opened (e.g. 10s, 500ms); 0s opens them,
    /// makes the round trips and closes them at once (a quick check that N fit)
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// The protocol of the one round trip on each connection
    #[arg(long, value_enum, default_value_t = Service::Echo)]
    pub service: Service,
    /// The server's process id: report the memory (PSS), threads and processes of its
    /// whole process tree from /proc (the same name as on `concur load`; `--pid`
    /// still works)
    #[arg(long, visible_alias = "pid", value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Give up on a connect or a reply after this long (more than 0)
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// On loopback, connections per source address (127.0.0.1, .2, ...) [default:
    /// 70% of half the ephemeral port range, 9,881 for 32768-60999]
    #[arg(long)]
    pub per_source: Option<usize>,
    /// Connects in progress at once (fewer while the server's accept queues, read from
    /// the kernel when the server is on this machine, have less room)
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Round trips outstanding at once; 1 (the default) times each round trip alone,
    /// as one client sees it while the others are held
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// The echo server's prefix ('' for plain echo)
    #[arg(long, default_value = crate::protocol::echo::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Wait until this time (Unix seconds or RFC 3339), then start opening connections
    #[arg(long, value_parser = crate::load::parse_start_at, value_name = "TIME")]
    pub start_at: Option<std::time::SystemTime>,
    /// Processes to spread the connections over; 0 (the default): as many as the
    /// descriptor limit requires (connections / (limit - 64), rounded up)
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Do not refuse a hold whose estimated memory (kernel sockets, this client, the
    /// server) exceeds MemAvailable
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// Internal: run as one process of a spread hold, its first connection being this
    /// global index; commands on stdin, report on stdout
    #[arg(long, hide = true, value_name = "OFFSET")]
    pub spread_child: Option<usize>,
}

/// Everything a hold run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldConfig {
    pub addr: String,
    pub conns: usize,
    pub duration: Duration,
    pub service: Service,
    /// `--server-pid`: the server whose /proc entry to read.
    pub server_pid: Option<u32>,
    pub timeout: Duration,
    pub per_source: usize,
    pub batch: usize,
    /// Round trips outstanding at once.
    pub in_flight: usize,
    pub prefix: Vec<u8>,
    /// Echo payload bytes of the round trip.
    pub size: usize,
    /// The fib n of the round trip.
    pub n: u32,
    /// `--start-at`: open the first connection at this time.
    pub start_at: Option<std::time::SystemTime>,
    /// `--processes`: 0 for as many as the descriptor limit requires.
    pub processes: usize,
    /// Compare the estimated memory with MemAvailable before opening.
    pub memory_check: bool,
}

impl HoldConfig {
    /// The command line's defaults.
    pub fn new(addr: impl Into<String>, conns: usize) -> Self {
        HoldConfig {
            addr: addr.into(),
            conns,
            duration: Duration::from_secs(10),
            service: Service::Echo,
            server_pid: None,
            timeout: Duration::from_secs(5),
            per_source: default_per_source(),
            batch: 512,
            in_flight: 1,
            prefix: crate::protocol::echo::DEFAULT_PREFIX.as_bytes().to_vec(),
            size: 16,
            n: 10,
            start_at: None,
            processes: 0,
            memory_check: true,
        }
    }
}

impl HoldArgs {
    pub fn config(&self) -> HoldConfig {
        HoldConfig {
            duration: self.duration,
            service: self.service,
            server_pid: self.server_pid,
            timeout: self.timeout,
            per_source: self.per_source.unwrap_or_else(default_per_source),
            batch: self.batch,
            in_flight: self.in_flight,
            prefix: self.prefix.as_bytes().to_vec(),
            start_at: self.start_at,
            processes: self.processes,
            memory_check: !self.no_memory_check,
            ..HoldConfig::new(self.addr.clone(), self.conns)
        }
    }
}

/// `concur hold`: run, print, return the exit status: the report's, or
/// [`crate::interrupt::EXIT_CODE`] when Ctrl-C stopped the run.
pub fn run(args: &HoldArgs) -> Result<u8> {
    let config = args.config();
    if let Some(offset) = args.spread_child {
        crate::interrupt::catch_as_child();
        return spread::child(&config, offset);
    }
    crate::interrupt::catch();
    let report = hold_spread(&config)?;
    if args.json {
        crate::output::print_out(&format!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        crate::output::print_out(&render(&report))?;
    }
    Ok(if report.interrupted {
        crate::interrupt::EXIT_CODE
    } else {
        report.exit_code()
    })
}

/// The checks every hold makes before it opens anything; the target address.
fn validate(config: &HoldConfig) -> Result<SocketAddr> {
    if config.conns == 0 || config.batch == 0 || config.per_source == 0 || config.in_flight == 0 {
        return Err(bad_input(
            "--conns, --batch, --per-source and --in-flight must be at least 1",
        ));
    }
    if config.n > crate::load::MAX_FIB_N || config.size == 0 {
        return Err(bad_input("bad round-trip request (size 0 or n too large)"));
    }
    if config.timeout.is_zero() {
        return Err(bad_input("--timeout must be more than 0"));
    }
    resolve(&config.addr)
}

/// Whether the server is on this machine (loopback): then both ends of every
/// connection are this machine's kernel's.
fn local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// `concur hold` as the command line runs it: in this process when the connections
/// fit under its descriptor limit (or `--processes 1`), else spread over child
/// processes (this binary again, see `spread`).
pub fn hold_spread(config: &HoldConfig) -> Result<HoldReport> {
    let addr = validate(config)?;
    let fd_limit = crate::sys::raise_fd_limit().context("raising the descriptor limit")?;
    let per_process = fd_limit.saturating_sub(SPARE_FDS).max(1);
    let needed = crate::sys::processes_for(config.conns as u64, fd_limit) as usize;
    let processes = match config.processes {
        0 => needed,
        p => p.min(config.conns),
    };
    if processes > MAX_PROCESSES {
        return Err(bad_input(format!(
            "--conns {} would need {processes} processes of {per_process} connections each \
             (each may open {fd_limit} file descriptors); at most {MAX_PROCESSES}",
            config.conns
        )));
    }
    if needed > processes {
        return Err(bad_input(format!(
            "--conns {} over --processes {processes} is {} per process, but each may open only \
             {fd_limit} descriptors; give --processes {} or more (or 0 for as many as needed)",
            config.conns,
            config.conns.div_ceil(processes),
            needed
        )));
    }
    if config.memory_check {
        cost::check_memory(config.conns, local(addr))?;
    }
    if processes <= 1 {
        return run_hold(config);
    }
    let exe = std::env::current_exe().context("finding this program to run its children")?;
    spread::run(config, addr, processes, &exe)
}

/// Open, verify and hold `conns` connections in this process; see the module doc.
/// (The command line goes through [`hold_spread`], which also spreads a hold too
/// large for one process and checks the memory first.)
pub fn run_hold(config: &HoldConfig) -> Result<HoldReport> {
    let addr = validate(config)?;
    let fd_limit = crate::sys::raise_fd_limit().context("raising the descriptor limit")?;
    let need = config.conns as u64 + SPARE_FDS;
    if need > fd_limit {
        return Err(bad_input(format!(
            "--conns {} needs about {need} file descriptors, but this process may open only {fd_limit} \
             (its hard limit); raise it with `ulimit -Hn` as root or LimitNOFILE, or ask for fewer",
            config.conns
        )));
    }
    let mut server = cost::ServerWatch::start(config.server_pid)?;
    let mut kernel = cost::KernelWatch::start(local(addr));
    let mut h = engine::Hold::new(config, addr, 0)?;
    if let Some(at) = config.start_at {
        crate::load::wait_until(at);
    }
    let wall_start = unix_now();
    let open_start = Instant::now();
    h.open_all()?;
    let open_secs = open_start.elapsed().as_secs_f64();
    if let Some(k) = &mut kernel {
        k.opened();
    }
    h.round_trip()?;
    let hold_start = Instant::now();
    h.hold(Some(hold_start + config.duration), None, || {
        if let Some(s) = &mut server {
            s.sample();
        }
        if let Some(k) = &mut kernel {
            k.sample();
        }
    })?;
    let held_secs = hold_start.elapsed().as_secs_f64();
    // The server's last reading, its connections still held.
    let server = server.map(|s| s.finish());
    let mut report = h.report(fd_limit, wall_start, open_secs, held_secs);
    report.window_end_unix = wall_start + open_start.elapsed().as_secs_f64();
    report.server = server;
    report.kernel = kernel.map(|k| k.stats());
    report.start_late_secs = config
        .start_at
        .map(|at| (wall_start - crate::load::unix_secs(at)).max(0.0));
    Ok(report)
}

/// Connections per source address unless `--per-source` says otherwise.
///
/// One source address has the ephemeral port range (`ip_local_port_range`,
/// 32768-60999: 28,232 ports) toward one server port, but connect() searches only
/// half of it first: it tries ports of one parity (even) and turns to the other only
/// after scanning all of the first. Past half the range every connect from that
/// address scans ~14,000 ports first; measured here, 19,000 connections from one
/// address took 7.2 s to open, against 0.6 to 0.8 s at 2,000 to 10,000 per address. So
/// the default stays at 70% of half the range.
pub fn default_per_source() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut ports = text.split_whitespace().map(|p| p.parse::<usize>().ok());
            Some((ports.next()??, ports.next()??))
        });
    match range {
        Some((low, high)) if high > low => ((high - low + 1) * 7 / 20).max(1),
        _ => 10_000,
    }
}

/// Now, in Unix seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
