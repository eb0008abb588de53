//! What a hold measured: the report `--json` prints (and `concur merge` reads) and
//! the table it prints otherwise.
//!
//! A connection costs memory in two places, and the report shows both. The server's
//! user space (its sessions, buffers, and per connection a thread or a process in
//! some models) is read from /proc for the server's whole process tree: a forking
//! server's workers are where its connections live. It is measured as PSS (each
//! shared page split between the processes sharing it), so forked workers sharing
//! their parent's pages are not counted once per worker as summed RSS would; its
//! growth per connection as private memory, because a process's PSS also moves when
//! other processes (anywhere on the machine) map or unmap the pages it shares. The
//! kernel's (socket structures, open files, epoll items, buffered bytes) is in no
//! process's RSS: it is read as the growth of the slab and of TCP's buffer memory,
//! machine-wide. On loopback that is both ends of every connection, the client's
//! socket and the server's; at a million connections it is most of the memory.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Round-trip latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Round-trip percentiles in microseconds, rounded to 0.1 us as `concur hold` does.
pub fn rtt_of(h: &Histogram<u64>) -> Rtt {
    if h.is_empty() {
        return Rtt::default();
    }
    let us = |q: f64| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0;
    Rtt {
        p50: us(0.5),
        p99: us(0.99),
        max: us(1.0),
    }
}

/// Round trips that failed, by kind (the same kinds as `concur load`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttErrors {
    pub timeout: u64,
    pub mismatch: u64,
    pub closed_early: u64,
    pub io: u64,
    /// Open connections never sent a request: a round trip had timed out with no
    /// other finished meanwhile, so the server was taken to have stopped answering.
    #[serde(default)]
    pub not_tried: u64,
}

impl RttErrors {
    pub fn total(&self) -> u64 {
        self.timeout + self.mismatch + self.closed_early + self.io + self.not_tried
    }
}

/// The server as /proc saw it: the process `--server-pid` names and all its
/// descendants (a forking server's workers), summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub pid: u32,
    /// RSS summed over the process tree (a page shared by k processes counts k times).
    pub rss_before_bytes: u64,
    /// The largest RSS seen while holding.
    pub rss_holding_bytes: u64,
    /// PSS summed over the process tree, before and (the largest) while holding;
    /// absent where /proc/PID/smaps_rollup could not be read.
    #[serde(default)]
    pub pss_before_bytes: Option<u64>,
    #[serde(default)]
    pub pss_holding_bytes: Option<u64>,
    /// Private memory (no other process shares it) summed over the tree, before and
    /// (the largest) while holding; absent with the PSS.
    #[serde(default)]
    pub private_before_bytes: Option<u64>,
    #[serde(default)]
    pub private_holding_bytes: Option<u64>,
    /// The measure used: "pss" when smaps_rollup could be read for the whole tree
    /// (totals in PSS, growth per connection in private memory, which other
    /// processes cannot move), else "rss".
    #[serde(default)]
    pub memory: String,
    /// Threads summed over the process tree.
    pub threads_before: u64,
    pub threads_holding: u64,
    /// Direct children of the process.
    pub children_before: usize,
    pub children_holding: usize,
    /// Processes in the tree (the process itself included).
    #[serde(default)]
    pub processes_before: usize,
    #[serde(default)]
    pub processes_holding: usize,
    /// What the server spent from before opening to the end of holding, each figure
    /// saying how it was measured (see `crate::account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<crate::account::ServerAccount>,
}

impl ServerStats {
    /// (before, holding) in the measure named by `memory`.
    pub fn memory_bytes(&self) -> (u64, u64) {
        match (
            self.memory.as_str(),
            self.pss_before_bytes,
            self.pss_holding_bytes,
        ) {
            ("pss", Some(b), Some(h)) => (b, h),
            _ => (self.rss_before_bytes, self.rss_holding_bytes),
        }
    }

    /// How much the server's memory grew while holding: private memory when the
    /// measure is PSS, else RSS.
    pub fn grown_bytes(&self) -> u64 {
        match (
            self.memory.as_str(),
            self.private_before_bytes,
            self.private_holding_bytes,
        ) {
            ("pss", Some(b), Some(h)) => h.saturating_sub(b),
            _ => self.rss_holding_bytes.saturating_sub(self.rss_before_bytes),
        }
    }

    /// The server's user-space memory per held connection, bytes; `None` when it did
    /// not grow or nothing was held.
    pub fn bytes_per_conn(&self, opened: u64) -> Option<u64> {
        let grown = self.grown_bytes();
        (grown > 0)
            .then_some(grown)
            .and_then(|g| g.checked_div(opened))
    }
}

/// The kernel's memory while holding, machine-wide: /proc/meminfo and
/// /proc/net/sockstat before opening and (the largest seen) while holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStats {
    pub slab_before_bytes: u64,
    pub slab_holding_bytes: u64,
    /// The unreclaimable part of the slab (TCP sockets, files, epoll items).
    pub sunreclaim_before_bytes: u64,
    pub sunreclaim_holding_bytes: u64,
    /// Pages charged to TCP socket buffers (`TCP: mem` in /proc/net/sockstat), bytes.
    pub tcp_mem_before_bytes: u64,
    pub tcp_mem_holding_bytes: u64,
    /// TCP sockets in use (`TCP: inuse`).
    pub tcp_inuse_before: u64,
    pub tcp_inuse_holding: u64,
    pub mem_available_before_bytes: u64,
    /// The server is on this machine (loopback): the growth is both ends of each
    /// connection, the client's socket and the server's.
    pub both_ends: bool,
    /// Connections the kernel dropped from a full accept queue while opening
    /// (`ListenOverflows`, this network namespace, any listener).
    #[serde(default)]
    pub listen_overflows: Option<u64>,
}

impl KernelStats {
    /// Slab plus TCP buffer growth, bytes.
    pub fn grown_bytes(&self) -> u64 {
        self.slab_holding_bytes
            .saturating_sub(self.slab_before_bytes)
            + self
                .tcp_mem_holding_bytes
                .saturating_sub(self.tcp_mem_before_bytes)
    }

    /// The kernel's memory per held connection (both ends on loopback), bytes;
    /// `None` when it did not grow or nothing was held.
    pub fn bytes_per_conn(&self, opened: u64) -> Option<u64> {
        let grown = self.grown_bytes();
        (grown > 0)
            .then_some(grown)
            .and_then(|g| g.checked_div(opened))
    }
}

/// The result of one `concur hold` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldReport {
    pub addr: String,
    pub service: String,
    /// Connections asked for.
    pub conns: usize,
    /// The bound on round trips outstanding at once (`--in-flight`).
    #[serde(default)]
    pub in_flight: usize,
    pub opened: u64,
    pub failed: u64,
    /// Failed connects by errno name, e.g. `ECONNREFUSED`.
    pub failed_by_errno: BTreeMap<String, u64>,
    /// Connections whose one round trip verified.
    pub answered_ok: u64,
    pub rtt_errors: RttErrors,
    /// Connections the server closed while they were held.
    pub closed_while_holding: u64,
    /// From the first connect to the last one finished.
    pub open_secs: f64,
    pub held_secs: f64,
    /// Source addresses used (127.0.0.1 and up on loopback).
    pub source_addrs: usize,
    /// The descriptor limit after raising it, summed over the hold's processes.
    pub fd_limit: u64,
    /// Processes the hold ran in (0 in reports that predate spreading: one).
    #[serde(default)]
    pub processes: usize,
    /// Connections opened per second of the open phase (`opened / open_secs`).
    #[serde(default)]
    pub open_per_sec: f64,
    pub rtt_us: Rtt,
    pub server: Option<ServerStats>,
    /// The kernel's memory, machine-wide (absent when /proc could not be read).
    #[serde(default)]
    pub kernel: Option<KernelStats>,
    /// The run in wall-clock time, Unix seconds: from the first connect to the end of
    /// holding, so reports of agents run together can be lined up.
    #[serde(default)]
    pub window_start_unix: f64,
    #[serde(default)]
    pub window_end_unix: f64,
    /// With `--start-at`: how late the first connect went out after the time asked.
    #[serde(default)]
    pub start_late_secs: Option<f64>,
    /// The round trip's parameters: echo payload bytes and prefix, fib n; and
    /// `--duration` in seconds.
    #[serde(default)]
    pub size: usize,
    #[serde(default)]
    pub n: u32,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub duration_secs: f64,
    /// Every verified round trip's latency (ns), in HdrHistogram's compressed V2
    /// encoding, base64 (see `load::report::encode_histogram`): percentiles of
    /// several agents come from adding these, never from averaging `rtt_us`.
    #[serde(default)]
    pub histogram: String,
    /// Ctrl-C stopped the run: the report holds what was measured until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl HoldReport {
    /// 0 only if every connection opened, answered correctly and stayed open.
    pub fn exit_code(&self) -> u8 {
        let all = self.conns as u64;
        if self.opened == all && self.answered_ok == all && self.closed_while_holding == 0 {
            0
        } else {
            1
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The human report.
pub fn render(r: &HoldReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hold {} {} | {} conns over {} source address(es) | {} | fd limit {}",
        r.service,
        r.addr,
        r.conns,
        r.source_addrs.max(1),
        match r.processes {
            0 | 1 => "1 process".to_string(),
            p => format!("{p} processes"),
        },
        r.fd_limit
    );
    if let Some(late) = r.start_late_secs {
        let _ = writeln!(out, "started {late:.6} s after --start-at");
    }
    if r.interrupted {
        let _ = writeln!(
            out,
            "interrupted: stopped by Ctrl-C; what was measured until then"
        );
    }
    let _ = writeln!(
        out,
        "opened {}/{} in {:.3} s{}   failed {}",
        r.opened,
        r.conns,
        r.open_secs,
        // A rate only of connections that opened.
        if r.opened > 0 {
            format!(" ({:.0} conns/s)", r.open_per_sec)
        } else {
            String::new()
        },
        r.failed
    );
    for (errno, n) in &r.failed_by_errno {
        let _ = writeln!(out, "  failed {errno}: {n}");
    }
    if let Some(k) = &r.kernel
        && let Some(n) = k.listen_overflows.filter(|&n| n > 0)
    {
        let _ = writeln!(
            out,
            "  listen overflows while opening: {n} (some accept queue on this machine was full: \
             SYNs dropped and sent again a second or more later)"
        );
    }
    let e = &r.rtt_errors;
    // Percentiles only of round trips that happened.
    let _ = write!(
        out,
        "round trip ({} in flight at most): answered ok {}/{}",
        r.in_flight, r.answered_ok, r.conns
    );
    if r.answered_ok > 0 {
        let _ = write!(
            out,
            "   p50 {:.1} us   p99 {:.1} us   max {:.1} us",
            r.rtt_us.p50, r.rtt_us.p99, r.rtt_us.max
        );
    }
    let _ = writeln!(out);
    if e.total() > 0 {
        let _ = writeln!(
            out,
            "  round-trip errors: timeout {}  mismatch {}  closed_early {}  io {}  not_tried {}",
            e.timeout, e.mismatch, e.closed_early, e.io, e.not_tried
        );
    }
    if e.not_tried > 0 {
        let _ = writeln!(
            out,
            "  not tried: a round trip timed out with no other answered meanwhile, so the server was taken to have stopped answering"
        );
    }
    let _ = writeln!(
        out,
        "held {:.2} s: closed by the server meanwhile {}",
        r.held_secs, r.closed_while_holding
    );
    if let Some(s) = &r.server {
        let (before, holding) = s.memory_bytes();
        let pss = s.memory == "pss";
        // No growth is not "0 B per connection": a server that held connections
        // before keeps (and reuses) that memory, so the cost is not visible here.
        let cost = match s.bytes_per_conn(r.opened) {
            Some(per) => format!(
                "{} +{:.1} MB, {per} B per connection",
                if pss { "private" } else { "grew" },
                mb(s.grown_bytes())
            ),
            None if r.opened == 0 => "nothing held".to_string(),
            None => "did not grow: memory kept from earlier connections was reused, \
                     so this is not a per-connection cost"
                .to_string(),
        };
        let measure = if pss {
            "PSS summed over the process tree, growth in private memory"
        } else {
            "RSS summed over the process tree"
        };
        let _ = writeln!(
            out,
            "server pid {}: {} {:.1} MB before, {:.1} MB holding ({cost}; {measure}); \
             processes {} -> {}; threads {} -> {}; children {} -> {}",
            s.pid,
            if pss { "pss" } else { "rss" },
            mb(before),
            mb(holding),
            s.processes_before.max(1),
            s.processes_holding.max(1),
            s.threads_before,
            s.threads_holding,
            s.children_before,
            s.children_holding
        );
        if let Some(a) = &s.account {
            let _ = writeln!(out, "  spent: {}", a.summary(None).replace('\n', "\n  "));
        }
    }
    if let Some(k) = r.kernel.as_ref().filter(|_| r.opened > 0) {
        let slab = k.slab_holding_bytes.saturating_sub(k.slab_before_bytes);
        let unreclaimable = k
            .sunreclaim_holding_bytes
            .saturating_sub(k.sunreclaim_before_bytes);
        let buffers = k
            .tcp_mem_holding_bytes
            .saturating_sub(k.tcp_mem_before_bytes);
        let per = match k.bytes_per_conn(r.opened) {
            Some(per) if k.both_ends => {
                format!("{per} B per connection, both ends (client and server sockets)")
            }
            Some(per) => format!("{per} B per connection, this end"),
            None => "did not grow".to_string(),
        };
        let _ = writeln!(
            out,
            "kernel (whole machine): slab +{:.1} MB (unreclaimable +{:.1} MB), TCP buffers +{:.1} MB: \
             {per}; TCP sockets {} -> {}",
            mb(slab),
            mb(unreclaimable),
            mb(buffers),
            k.tcp_inuse_before,
            k.tcp_inuse_holding
        );
    }
    out
}
