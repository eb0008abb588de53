//! What a lab run measured, typed: the [`Results`] that `results.json` holds, and the
//! reading of each child's JSON (`concur load`'s [`LoadReport`], `concur hold`'s
//! [`HoldReport`], the fib table of `concur fib --json` and `fib_cpu.py`) into the
//! metrics of a [`Point`]. Nothing here formats or draws: the views read these.

use super::servers::Family;
use super::stats::Point;
use crate::account::ServerAccount;
use crate::hold::HoldReport;
use crate::load::report::LoadReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The experiments, in the order the report shows them.
pub const EXPERIMENTS: [&str; 4] = ["cpu", "echo", "scaling", "fibload"];

/// The cpu case of Rust running CPython's list sequentially: one naive fib(n) per
/// call, compared on the same n.
pub const SAME_N_CASE: &str = "mode=sequential on CPython's list";

/// One run's metrics, by name.
pub type Metrics = BTreeMap<String, f64>;

/// One `concur load` run read for a point: its metrics, and how each of the server's
/// was measured (metric name to "cgroup", "sampled" or "not measured").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub metrics: Metrics,
    pub measured: BTreeMap<String, String>,
}

/// Everything a lab run measured, as `results.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub concur_version: String,
    /// Unix seconds when the run started.
    pub started_unix: u64,
    pub machine: Machine,
    /// The exact parameters of the run.
    pub params: serde_json::Value,
    /// Server pinned to core 0 and load to core 1.
    pub pinned: bool,
    /// Ctrl-C stopped the run before the end: what is here is what was measured.
    pub interrupted: bool,
    pub points: Vec<Point>,
    /// Experiment id to its computed answer.
    pub answers: BTreeMap<String, String>,
    /// Things that went wrong outside any one point (e.g. a server that ignored SIGTERM).
    pub notes: Vec<String>,
    /// Experiment id to the exact command lines it ran: servers (`{port}` is the free
    /// port each got) and clients (`{pid}` the server's).
    #[serde(default)]
    pub commands: BTreeMap<String, Vec<String>>,
    /// The servers of the run in order, with their family and facts.
    #[serde(default)]
    pub servers: Vec<ServerInfo>,
    /// Experiment id to its wall time, seconds.
    #[serde(default)]
    pub experiment_secs: BTreeMap<String, f64>,
    /// The machine's limits the scaling ladder decided by (absent when it did not run).
    #[serde(default)]
    pub scaling_limits: Option<ScalingLimits>,
}

/// A server of the run, as the report groups it and its answers speak of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub family: Family,
    /// What bounds the clients it serves at once, as `concur models` names it
    /// (`one`, `threads`, `descriptors`...); absent for a user's server.
    #[serde(default)]
    pub ceiling: Option<String>,
    /// For a Python peer, the concur model written the same way.
    #[serde(default)]
    pub counterpart: Option<String>,
}

/// The limits the scaling ladder read at the start of the experiment (memory is read
/// again before each rung; the skipped rungs quote what they saw).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingLimits {
    /// Descriptors per process.
    pub fd_limit: u64,
    pub thread_ceiling: u64,
    pub process_ceiling: u64,
    /// MemAvailable when the experiment started, bytes.
    pub mem_available_bytes: Option<u64>,
}

/// The machine's facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    #[serde(default)]
    pub hostname: String,
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub python: Option<String>,
}

impl Machine {
    pub fn read(python: Option<String>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .map_or_else(
                || std::env::consts::ARCH.to_string(),
                |s| s.trim().to_string(),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        Machine {
            hostname,
            cores: crate::sys::cores(),
            kernel,
            cpu_model,
            memory_gib: mem_kb / 1048576.0,
            python,
        }
    }
}

/// `concur fib --json` and `peers/python/fib_cpu.py` print rows with these keys.
#[derive(Debug, Clone, Deserialize)]
pub struct FibRun {
    pub rows: Vec<FibRow>,
}

/// One way of running the fib list.
#[derive(Debug, Clone, Deserialize)]
pub struct FibRow {
    pub mode: String,
    pub wall_secs: f64,
    pub cpu_secs: f64,
    #[serde(default)]
    pub speedup: Option<f64>,
    pub verified: bool,
}

impl FibRow {
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::from([
            ("wall_secs".to_string(), self.wall_secs),
            ("cpu_secs".to_string(), self.cpu_secs),
            (
                "verified".to_string(),
                if self.verified { 1.0 } else { 0.0 },
            ),
        ]);
        if let Some(s) = self.speedup {
            m.insert("speedup".into(), s);
        }
        m
    }
}

/// The client's side of one `concur load` run. `errors` and `errors_by_kind` are both
/// kept so the numbers can be checked against each other (the kinds add up to the
/// total; req/s x elapsed gives the count; the bytes received cover every reply).
pub fn load_metrics(r: &LoadReport) -> Run {
    let e = &r.errors;
    let by_kind = e.refused + e.timeout + e.mismatch + e.closed_early + e.connect + e.io;
    let mut m = Metrics::from([
        ("requests_ok".to_string(), r.requests_ok as f64),
        ("errors".to_string(), r.errors_total as f64),
        ("errors_by_kind".to_string(), by_kind as f64),
        ("errors_timeout".to_string(), e.timeout as f64),
        ("errors_refused".to_string(), e.refused as f64),
        ("errors_closed_early".to_string(), e.closed_early as f64),
        ("elapsed_secs".to_string(), r.elapsed_secs),
        ("bytes_received".to_string(), r.bytes_received as f64),
        ("req_per_s".to_string(), r.req_per_s),
        ("mb_per_s".to_string(), r.mb_per_s),
    ]);
    if r.requests_ok > 0 {
        m.insert("p50_us".into(), r.latency_us.p50);
        m.insert("p99_us".into(), r.latency_us.p99);
        m.insert("p999_us".into(), r.latency_us.p999);
    }
    if let Some(h) = &r.heavy {
        m.insert("heavy_ok".into(), h.requests_ok as f64);
        if h.requests_ok > 0 {
            m.insert("heavy_p99_us".into(), h.latency_us.p99);
        }
    }
    let mut measured = BTreeMap::new();
    if let Some(a) = &r.server {
        let requests = r.requests_ok + r.heavy.as_ref().map_or(0, |h| h.requests_ok);
        let mb = 1.0 / 1048576.0;
        // Each figure is kept with how it was measured; one not measured is absent
        // from the metrics and says so in `measured`, never a 0.
        let figures: [(&str, &crate::account::Figure, Option<f64>); 8] = [
            ("server_cpu_secs", &a.cpu_secs, a.cpu_secs.value),
            (
                "server_cpu_us_per_req",
                &a.cpu_secs,
                ServerAccount::per_request(&a.cpu_secs, requests).map(|s| s * 1e6),
            ),
            (
                "ctx_switches_per_req",
                &a.context_switches,
                ServerAccount::per_request(&a.context_switches, requests),
            ),
            ("server_threads", &a.threads_peak, a.threads_peak.value),
            (
                "server_children",
                &a.processes_peak,
                a.processes_peak.value.map(|p| (p - 1.0).max(0.0)),
            ),
            (
                "server_pss_mb",
                &a.pss_bytes,
                a.pss_bytes.value.map(|b| b * mb),
            ),
            (
                "server_rss_mb",
                &a.rss_bytes,
                a.rss_bytes.value.map(|b| b * mb),
            ),
            (
                "server_sock_mb",
                &a.sock_bytes,
                a.sock_bytes.value.map(|b| b * mb),
            ),
        ];
        for (name, figure, value) in figures {
            if let Some(v) = value {
                m.insert(name.to_string(), v);
            }
            let how = match value {
                Some(_) => figure.measured.label(),
                None => crate::account::How::NotMeasured.label(),
            };
            measured.insert(name.to_string(), how.to_string());
        }
    }
    Run {
        metrics: m,
        measured,
    }
}

/// One line naming the first wrong reply byte, when the server answered wrongly: such
/// a server is not measured as fast, whatever its request rate.
pub fn verification_failure(r: &LoadReport) -> Option<String> {
    if r.errors.mismatch == 0 {
        return None;
    }
    let at = r.first_mismatch.as_ref().map_or(String::new(), |f| {
        let expected = f
            .expected
            .map_or("nothing more".to_string(), |b| format!("{:?}", b as char));
        // The server's own words first, when the client recorded them: an `ERR` line
        // explains itself.
        let said = f
            .received
            .as_ref()
            .map_or(String::new(), |line| format!(": the server answered \"{line}\""));
        format!(
            "{said}: first wrong byte at offset {} of connection {}'s replies (request {}): got {:?}, expected {expected}",
            f.offset, f.conn, f.request, f.got as char
        )
    });
    Some(format!(
        "failed verification ({} connection{} got a wrong reply){at}",
        r.errors.mismatch,
        if r.errors.mismatch == 1 { "" } else { "s" }
    ))
}

/// Why a server refused or dropped connections, in words, from the last warning or
/// error in its log: `2026-11-27T01:24:15Z WARN refused 127.0.0.5:4711: descriptor
/// 1024 >= FD_SETSIZE ...` becomes "select(2) cannot watch descriptor 1024 (FD_SETSIZE
/// is 1024)". The raw line stays in the server's log.
pub fn server_reason(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("WARN") || l.contains("ERROR"))
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // Drop a leading timestamp and log level.
    let skip = words
        .iter()
        .take(2)
        .take_while(|w| {
            w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains(':')
                || ["WARN", "ERROR", "INFO", "DEBUG"].contains(w)
        })
        .count();
    let text = words[skip..].join(" ");
    let after = |key: &str| {
        text.split(key)
            .nth(1)
            .and_then(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .find(|s| !s.is_empty())
            })
            .map(String::from)
    };
    let said = if text.contains("FD_SETSIZE") {
        let fd = after("descriptor ").unwrap_or_else(|| "1024".into());
        format!("select(2) cannot watch descriptor {fd} (FD_SETSIZE is 1024)")
    } else if text.contains("cannot fork") {
        format!(
            "the server could not fork another process ({})",
            text.rsplit(": ").next().unwrap_or("")
        )
    } else if text.contains("cannot start a thread") {
        format!(
            "the server could not start another thread ({})",
            text.rsplit(": ").next().unwrap_or("")
        )
    } else if text.contains("waiting clients is full") {
        "the worker pool was busy and its queue of waiting clients full".to_string()
    } else if text.contains("--max-conns") {
        "the server reached its --max-conns limit".to_string()
    } else if text.contains("Too many open files") {
        "the server ran out of file descriptors (EMFILE)".to_string()
    } else if text.starts_with("listening on") {
        return None;
    } else {
        text
    };
    Some(said)
}

/// One `concur hold` run: the client's side, and what a connection cost as hold
/// measured it (`--server-pid`): the server's user space (`server_b_per_conn`: growth
/// in private memory over its process tree; `server_rss_b_per_conn` instead where PSS
/// could not be read throughout) and the kernel's (`kernel_b_per_conn`: slab and TCP
/// buffers, machine-wide, both loopback ends), per connection.
pub fn hold_metrics(r: &HoldReport) -> Metrics {
    let mut m = Metrics::from([
        ("opened".to_string(), r.opened as f64),
        ("answered_ok".to_string(), r.answered_ok as f64),
        ("failed".to_string(), r.failed as f64),
        (
            "closed_while_holding".to_string(),
            r.closed_while_holding as f64,
        ),
        ("open_secs".to_string(), r.open_secs),
        ("open_per_sec".to_string(), r.open_per_sec),
        ("source_addrs".to_string(), r.source_addrs as f64),
        ("hold_processes".to_string(), r.processes.max(1) as f64),
    ]);
    if r.answered_ok > 0 {
        m.insert("rtt_p50_us".into(), r.rtt_us.p50);
        m.insert("rtt_p99_us".into(), r.rtt_us.p99);
    }
    if let Some(s) = &r.server {
        let mb = |b: u64| b as f64 / 1048576.0;
        let (_, holding) = s.memory_bytes();
        let key = if s.memory == "pss" {
            "server_pss_mb"
        } else {
            "server_rss_mb"
        };
        m.insert(key.into(), mb(holding));
        m.insert("server_rss_mb".into(), mb(s.rss_holding_bytes));
        m.insert("server_threads".into(), s.threads_holding as f64);
        m.insert("server_processes".into(), s.processes_holding.max(1) as f64);
        // Private memory only where every reading had PSS for the whole tree; else the
        // growth is RSS, which counts a forked child's shared pages once per child: kept
        // under its own name, never mixed with the private figures.
        if let Some(b) = s.bytes_per_conn(r.opened) {
            let key = if s.memory == "pss" {
                "server_b_per_conn"
            } else {
                "server_rss_b_per_conn"
            };
            m.insert(key.into(), b as f64);
        }
    }
    if let Some(b) = r.kernel.as_ref().and_then(|k| k.bytes_per_conn(r.opened)) {
        m.insert("kernel_b_per_conn".into(), b as f64);
    }
    // The server's own end, where its cgroup charges socket memory: the TCP buffers
    // its held connections keep, beside the whole machine's kernel figure.
    let sock = r
        .server
        .as_ref()
        .and_then(|s| s.account.as_ref())
        .and_then(|a| a.sock_bytes.value);
    if let (Some(b), true) = (sock, r.opened > 0) {
        m.insert("server_sock_b_per_conn".into(), b / r.opened as f64);
    }
    m
}

/// Why a hold fell short of every connection opened, answered and kept open, in words
/// (`None` when it did not): connect errors by errno, round trips by kind, and the
/// connections the server closed while they were held.
pub fn hold_shortfall(r: &HoldReport) -> Option<String> {
    if r.exit_code() == 0 {
        return None;
    }
    let mut parts = vec![format!(
        "opened {} and answered {} of {}",
        r.opened, r.answered_ok, r.conns
    )];
    if !r.failed_by_errno.is_empty() {
        let list: Vec<String> = r
            .failed_by_errno
            .iter()
            .map(|(errno, n)| format!("{errno} x{n}"))
            .collect();
        parts.push(format!("connects failed: {}", list.join(", ")));
    }
    let e = &r.rtt_errors;
    let kinds: Vec<String> = [
        ("timed out", e.timeout),
        ("answered wrongly", e.mismatch),
        ("closed before answering", e.closed_early),
        ("socket error", e.io),
        ("not tried after the server stopped answering", e.not_tried),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    if !kinds.is_empty() {
        parts.push(format!("round trips: {}", kinds.join(", ")));
    }
    if r.closed_while_holding > 0 {
        parts.push(format!(
            "{} closed by the server while held",
            r.closed_while_holding
        ));
    }
    Some(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(errors: serde_json::Value, first: serde_json::Value) -> LoadReport {
        serde_json::from_value(json!({
            "addr": "127.0.0.1:1", "service": "echo", "mode": "closed", "conns": 2,
            "threads": 1, "pipeline": 1, "elapsed_secs": 0.5, "requests_ok": 100,
            "errors_total": 1, "errors": errors, "first_mismatch": first,
            "req_per_s": 200.0, "mb_per_s": 0.1, "bytes_sent": 6400, "bytes_received": 7400,
            "latency_us": {"p50": 10.0, "p90": 20.0, "p99": 30.0, "p999": 40.0, "max": 50.0, "mean": 12.0},
        }))
        .unwrap()
    }

    #[test]
    fn a_load_report_becomes_metrics_and_a_wrong_byte_one_line() {
        let counts = json!({"refused": 0, "timeout": 1, "mismatch": 0, "closed_early": 0, "connect": 0, "io": 0});
        let ok = load(counts, json!(null));
        let m = load_metrics(&ok).metrics;
        assert_eq!(m["requests_ok"], 100.0);
        assert_eq!(m["errors"], m["errors_by_kind"]);
        assert_eq!(m["p99_us"], 30.0);
        assert!(verification_failure(&ok).is_none());
        let counts = json!({"refused": 0, "timeout": 0, "mismatch": 1, "closed_early": 0, "connect": 0, "io": 0});
        let bad = load(
            counts,
            json!({"conn": 1, "request": 0, "offset": 10, "expected": 42, "got": 43}),
        );
        let why = verification_failure(&bad).unwrap();
        assert!(why.starts_with("failed verification"), "{why}");
        assert!(why.contains("offset 10") && why.contains("'+'"), "{why}");
        assert!(!why.contains("the server answered"), "{why}");
        assert_eq!(why.lines().count(), 1);
        // The server's line, when the client recorded it, comes first.
        let counts = json!({"refused": 0, "timeout": 0, "mismatch": 1, "closed_early": 0, "connect": 0, "io": 0});
        let said = load(
            counts,
            json!({"conn": 0, "request": 2, "offset": 40, "expected": 49, "got": 69,
                   "received": "ERR n out of range 0..=42", "received_offset": 40}),
        );
        let why = verification_failure(&said).unwrap();
        assert!(
            why.starts_with(
                "failed verification (1 connection got a wrong reply): the server answered \"ERR n out of range 0..=42\": first wrong byte at offset 40"
            ),
            "{why}"
        );
        assert_eq!(why.lines().count(), 1);
    }

    fn hold(opened: u64, answered: u64, closed: u64) -> HoldReport {
        serde_json::from_value(json!({
            "addr": "127.0.0.1:1", "service": "echo", "conns": 10, "in_flight": 1,
            "opened": opened, "failed": 10 - opened, "failed_by_errno": if opened < 10 { json!({"EMFILE": 10 - opened}) } else { json!({}) },
            "answered_ok": answered,
            "rtt_errors": {"timeout": 0, "mismatch": 0, "closed_early": 0, "io": 0, "not_tried": opened - answered},
            "closed_while_holding": closed, "open_secs": 0.1, "held_secs": 0.3,
            "source_addrs": 1, "fd_limit": 1024, "rtt_us": {"p50": 1.0, "p99": 2.0, "max": 3.0},
            "server": null, "window_start_unix": 0.0, "window_end_unix": 0.4,
        }))
        .unwrap()
    }

    #[test]
    fn a_holds_costs_per_connection_keep_their_measure() {
        let mut r = hold(10, 10, 0);
        r.server = Some(
            serde_json::from_value(json!({
                "pid": 1, "rss_before_bytes": 1000, "rss_holding_bytes": 101_000,
                "pss_before_bytes": 900, "pss_holding_bytes": 20_900,
                "private_before_bytes": 800, "private_holding_bytes": 4_800,
                "memory": "pss", "threads_before": 1, "threads_holding": 1,
                "children_before": 6, "children_holding": 6,
                "processes_before": 7, "processes_holding": 7,
            }))
            .unwrap(),
        );
        r.kernel = Some(
            serde_json::from_value(json!({
                "slab_before_bytes": 0, "slab_holding_bytes": 102_400,
                "sunreclaim_before_bytes": 0, "sunreclaim_holding_bytes": 0,
                "tcp_mem_before_bytes": 0, "tcp_mem_holding_bytes": 0,
                "tcp_inuse_before": 0, "tcp_inuse_holding": 20,
                "mem_available_before_bytes": 1, "both_ends": true,
            }))
            .unwrap(),
        );
        let m = hold_metrics(&r);
        assert_eq!(m["server_b_per_conn"], 400.0, "private growth / opened");
        assert_eq!(m["kernel_b_per_conn"], 10_240.0);
        assert_eq!(m["server_processes"], 7.0);
        assert!(m.contains_key("server_pss_mb"));
        assert!(!m.contains_key("server_rss_b_per_conn"));
        // No cgroup, no figure of the server's own sockets (not a 0).
        assert!(!m.contains_key("server_sock_b_per_conn"));
        let figure = |value: Option<f64>, measured: crate::account::How| crate::account::Figure {
            value,
            measured,
            note: String::new(),
        };
        let cg = crate::account::How::Cgroup;
        r.server.as_mut().unwrap().account = Some(ServerAccount {
            pid: 1,
            cgroup: Some("memory: v1 /sys/fs/cgroup/memory/concur-lab-1-0".into()),
            cpu_secs: figure(Some(0.5), cg),
            context_switches: figure(Some(10.0), crate::account::How::Sampled),
            threads_peak: figure(Some(1.0), crate::account::How::Sampled),
            processes_peak: figure(Some(7.0), crate::account::How::Sampled),
            tasks_seen: 7,
            tasks_exited: 0,
            processes_seen: 7,
            memory_bytes: figure(Some(1e6), cg),
            sock_bytes: figure(Some(40_960.0), cg),
            pss_bytes: figure(Some(20_900.0), crate::account::How::Sampled),
            rss_bytes: figure(Some(101_000.0), crate::account::How::Sampled),
            samples: 3,
            sample_interval_ms: 10.0,
            sampler_cpu_secs: 0.001,
        });
        assert_eq!(hold_metrics(&r)["server_sock_b_per_conn"], 4_096.0);
        // PSS lost in one reading: the RSS growth, under its own name.
        r.server.as_mut().unwrap().memory = "rss".into();
        let m = hold_metrics(&r);
        assert_eq!(m["server_rss_b_per_conn"], 10_000.0);
        assert!(!m.contains_key("server_b_per_conn") && !m.contains_key("server_pss_mb"));
    }

    #[test]
    fn server_log_lines_become_reasons_in_words() {
        let select = "listening on 127.0.0.1:1 model=select\n2026-11-27T01:24:15Z  WARN refused 127.0.0.5:4711: descriptor 1024 >= FD_SETSIZE (1024), select(2) cannot watch it\n";
        assert_eq!(
            server_reason(select).unwrap(),
            "select(2) cannot watch descriptor 1024 (FD_SETSIZE is 1024)"
        );
        let fork = "2026-11-27T01:24:15Z WARN refused 127.0.0.1:5: cannot fork: EAGAIN: Resource temporarily unavailable";
        assert!(
            server_reason(fork)
                .unwrap()
                .starts_with("the server could not fork")
        );
        assert_eq!(server_reason("listening on 127.0.0.1:1 model=x\n"), None);
        assert_eq!(
            server_reason("Traceback: OSError: boom").unwrap(),
            "Traceback: OSError: boom"
        );
    }

    #[test]
    fn a_hold_says_why_it_fell_short_including_closes_while_holding() {
        assert_eq!(hold_shortfall(&hold(10, 10, 0)), None);
        assert_eq!(hold_metrics(&hold(10, 10, 0))["answered_ok"], 10.0);
        let closed = hold_shortfall(&hold(10, 10, 3)).unwrap();
        assert!(
            closed.contains("3 closed by the server while held"),
            "{closed}"
        );
        let refused = hold_shortfall(&hold(7, 5, 0)).unwrap();
        assert!(
            refused.contains("opened 7 and answered 5 of 10"),
            "{refused}"
        );
        assert!(refused.contains("EMFILE x3"), "{refused}");
        assert!(refused.contains("2 not tried"), "{refused}");
    }
}
