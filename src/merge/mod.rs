//! Merging the reports of several `concur load` agents, or of several `concur hold`
//! agents, into one exact report.
//!
//! One machine cannot load a large server, so users run agents on several. The trap
//! (reported by cassandra-stress, YCSB and autocannon users alike) is to average the
//! agents' percentiles: the mean of three p99s is not the p99 of the whole, and the
//! tail is exactly what it gets wrong. The only exact way is to add the agents' latency
//! histograms and read the percentiles from the sum; every report carries its whole
//! histogram for that (see [`crate::load::report::encode_histogram`]).
//!
//! So a merge is: counters summed, histograms added, percentiles read from the sum,
//! throughput over the window the agents were answered in together: from the first
//! agent's first request to the last verified reply of any (each report's answered
//! window, see [`crate::load::report`]; with `--start-at` and `--duration` the agents
//! start and stop together, and a server that answered to the end makes that window
//! each agent's own). The runs merge the same way (first start to last end). Both
//! windows are kept as their ends on the wall clock, which a merge takes the minimum
//! and maximum of, so the result has the schema of one report and merges nest exactly:
//! merging merges gives what merging all the agents at once gives. Reports that
//! measured different things (another service, payload size, prefix, fib n or
//! terminator, loop mode) are refused, naming the field; a report whose run overlaps
//! no other's is kept but flagged, since it did not load the server at the same time
//! as the others.
//!
//! `concur hold` agents merge the same way ([`merge_hold`]): one machine (or one
//! process, below its own descriptor limit) cannot hold a million connections, several
//! can. Connections opened, failed (by errno), answered and closed while held are
//! summed, the round-trip histograms added and the percentiles read from the sum, the
//! window is the union of the agents'. The server's /proc figures (RSS, threads,
//! children) are different: every agent given `--pid` reads the same server, so they
//! are views of one thing, not parts of a whole. Summed they would be wrong, and no
//! agent's view alone accounts for the others' connections at the moment it read; so
//! they are kept only when exactly one agent reported them, and otherwise dropped with
//! a warning saying why. A merged hold report is hold's own JSON plus `agents`,
//! `server_views` and `merge_warnings`, so it reads as a hold report and merges nest.
//!
//! No I/O here: reports in, a report or an error out ([`command::run`] reads files).

pub mod command;

use crate::hold::{HoldReport, Rtt, RttErrors};
use crate::load::report::{
    CpuReport, CpuUse, ErrorCounts, HeavyReport, Latency, LoadReport, decode_histogram,
    encode_histogram, histogram,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Why reports could not be merged.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeError {
    #[error("nothing to merge: give at least one report")]
    Empty,
    #[error(
        "the reports measured different things: {field} is {first} in {first_name} but {other} in {other_name}"
    )]
    Mismatch {
        field: &'static str,
        first_name: String,
        first: String,
        other_name: String,
        other: String,
    },
    #[error(
        "{name}: its {what} histogram is missing or unreadable ({why}); was it made by `concur load --json` or `concur hold --json`?"
    )]
    Histogram {
        name: String,
        what: &'static str,
        why: String,
    },
}

/// The fields that must be equal for latencies to be comparable, as text.
fn identity(r: &LoadReport) -> [(&'static str, String); 7] {
    [
        ("service", r.service.clone()),
        ("mode", r.mode.clone()),
        ("size", r.size.to_string()),
        ("prefix", format!("{:?}", r.prefix)),
        ("n", r.n.to_string()),
        ("question", r.question.to_string()),
        (
            "heavy n",
            r.heavy
                .as_ref()
                .map_or("none".into(), |h| format!("fib({})", h.n)),
        ),
    ]
}

fn decode(name: &str, what: &'static str, text: &str) -> Result<Histogram<u64>, MergeError> {
    let fail = |why: String| MergeError::Histogram {
        name: name.to_string(),
        what,
        why,
    };
    if text.is_empty() {
        return Err(fail("absent".into()));
    }
    let h = decode_histogram(text).map_err(|e| fail(e.to_string()))?;
    let mut into = histogram();
    into.add(&h).map_err(|e| fail(format!("{e:?}")))?;
    Ok(into)
}

/// Add one report's histogram to `into`, naming the report if it cannot be read.
fn add_histogram(
    into: &mut Histogram<u64>,
    name: &str,
    what: &'static str,
    text: &str,
) -> Result<(), MergeError> {
    into.add(decode(name, what, text)?)
        .map_err(|e| MergeError::Histogram {
            name: name.to_string(),
            what,
            why: format!("{e:?}"),
        })
}

/// A warning for each window (name, start, end in Unix seconds) that overlaps no other
/// one's: that agent did `what` alone, not at the same time as the others.
fn lonely_windows(windows: &[(&str, f64, f64)], what: &str) -> Vec<String> {
    if windows.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &(name, start, end)) in windows.iter().enumerate() {
        let overlaps = windows
            .iter()
            .enumerate()
            .any(|(j, &(_, s, e))| j != i && start < e && s < end);
        if !overlaps {
            out.push(format!(
                "{name}: its window ({start:.3} to {end:.3}, Unix seconds) overlaps no other report's; \
                 it did not {what} at the same time"
            ));
        }
    }
    out
}

/// Merge named reports (the names only label errors and warnings).
pub fn merge(reports: &[(String, LoadReport)]) -> Result<LoadReport, MergeError> {
    let Some((first_name, first)) = reports.first() else {
        return Err(MergeError::Empty);
    };
    let want = identity(first);
    for (name, r) in &reports[1..] {
        for ((field, a), (_, b)) in want.iter().zip(identity(r)) {
            if *a != b {
                return Err(MergeError::Mismatch {
                    field,
                    first_name: first_name.clone(),
                    first: a.clone(),
                    other_name: name.clone(),
                    other: b,
                });
            }
        }
    }
    let mut light = histogram();
    let mut heavy = histogram();
    let mut errors = ErrorCounts::default();
    let mut out = first.clone();
    let (mut ok, mut sent, mut failed, mut unfinished) = (0, 0, 0, 0);
    let (mut bytes_sent, mut bytes_received, mut heavy_ok) = (0, 0, 0);
    let (mut conns, mut threads, mut agents, mut load_cpu) = (0, 0, 0, 0.0);
    let mut rate: Option<f64> = None;
    let mut addrs: Vec<&str> = Vec::new();
    let mut warnings = Vec::new();
    for (name, r) in reports {
        light
            .add(decode(name, "latency", &r.histogram)?)
            .map_err(|e| MergeError::Histogram {
                name: name.clone(),
                what: "latency",
                why: format!("{e:?}"),
            })?;
        if let Some(h) = &r.heavy {
            heavy
                .add(decode(name, "heavy", &h.histogram)?)
                .map_err(|e| MergeError::Histogram {
                    name: name.clone(),
                    what: "heavy",
                    why: format!("{e:?}"),
                })?;
            heavy_ok += h.requests_ok;
        }
        errors.add(&r.errors);
        ok += r.requests_ok;
        sent += r.requests_sent;
        failed += r.requests_failed;
        unfinished += r.requests_unfinished;
        bytes_sent += r.bytes_sent;
        bytes_received += r.bytes_received;
        conns += r.conns;
        threads += r.threads;
        agents += r.agents.max(1);
        load_cpu += r.cpu.map_or(0.0, |c| c.load.secs);
        rate = match (rate, r.rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        if !addrs.contains(&r.addr.as_str()) {
            addrs.push(&r.addr);
        }
        out.first_mismatch = out.first_mismatch.or_else(|| r.first_mismatch.clone());
        warnings.extend(r.merge_warnings.iter().cloned());
    }
    // Whether agents loaded the server together is a matter of their runs (an agent
    // whose server never answered still loaded it).
    let runs: Vec<_> = reports
        .iter()
        .map(|(n, r)| (n.as_str(), r.window_start_unix, r.run_end_unix()))
        .collect();
    warnings.extend(lonely_windows(&runs, "load the server"));
    let start = reports
        .iter()
        .map(|(_, r)| r.window_start_unix)
        .fold(f64::INFINITY, f64::min);
    let end = reports
        .iter()
        .map(|(_, r)| r.window_end_unix)
        .fold(f64::NEG_INFINITY, f64::max);
    let run_end = reports
        .iter()
        .map(|(_, r)| r.run_end_unix())
        .fold(f64::NEG_INFINITY, f64::max);
    let elapsed = (end - start).max(0.0);
    let requests = ok + heavy_ok;
    // No rate without a verified request, nor over an empty window.
    let per_sec = |x: u64| {
        if requests > 0 && elapsed > 0.0 {
            x as f64 / elapsed
        } else {
            0.0
        }
    };
    out.addr = addrs.join(",");
    out.conns = conns;
    out.threads = threads;
    out.rate = rate;
    out.elapsed_secs = elapsed;
    out.run_secs = Some((run_end - start).max(elapsed));
    out.window_start_unix = start;
    out.window_end_unix = end;
    out.run_end_unix = Some(run_end);
    out.requests_ok = ok;
    out.requests_sent = sent;
    out.requests_failed = failed;
    out.requests_unfinished = unfinished;
    out.errors_total = errors.total();
    out.errors = errors;
    out.req_per_s = per_sec(ok);
    out.mb_per_s = per_sec(bytes_received) / 1e6;
    out.bytes_sent = bytes_sent;
    out.bytes_received = bytes_received;
    out.latency_us = Latency::from_histogram(&light);
    out.histogram = encode_histogram(&light);
    out.heavy = first.heavy.as_ref().map(|h| HeavyReport {
        n: h.n,
        requests_ok: heavy_ok,
        latency_us: Latency::from_histogram(&heavy),
        histogram: encode_histogram(&heavy),
    });
    // The agents' own CPU adds up; a server's, seen by each agent, would be counted
    // once per agent, so it is left out.
    out.cpu = Some(CpuReport {
        load: CpuUse {
            secs: load_cpu,
            us_per_request: if requests > 0 {
                load_cpu * 1e6 / requests as f64
            } else {
                0.0
            },
        },
        server: None,
    });
    out.agents = agents;
    out.start_late_secs = None;
    out.merge_warnings = warnings;
    Ok(out)
}

/// A `concur hold` report as `concur merge` reads and writes it: hold's own fields, plus
/// what a merge adds (all absent from one agent's report, and defaulted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldMerge {
    #[serde(flatten)]
    pub report: HoldReport,
    /// Agents merged into this report (absent, 0: one).
    #[serde(default)]
    pub agents: u64,
    /// How many of those agents read the server's /proc figures (`--pid`); absent: one
    /// if `server` is there, else none.
    #[serde(default)]
    pub server_views: Option<u64>,
    #[serde(default)]
    pub merge_warnings: Vec<String>,
}

impl From<HoldReport> for HoldMerge {
    fn from(report: HoldReport) -> Self {
        HoldMerge {
            report,
            agents: 1,
            server_views: None,
            merge_warnings: Vec::new(),
        }
    }
}

impl HoldMerge {
    fn agents(&self) -> u64 {
        self.agents.max(1)
    }

    fn server_views(&self) -> u64 {
        self.server_views
            .unwrap_or(u64::from(self.report.server.is_some()))
    }
}

/// The fields that must be equal for hold reports to describe one experiment.
fn hold_identity(r: &HoldReport) -> [(&'static str, String); 4] {
    [
        ("service", r.service.clone()),
        ("size", r.size.to_string()),
        ("n", r.n.to_string()),
        ("prefix", format!("{:?}", r.prefix)),
    ]
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

/// Merge named `concur hold` reports (the names only label errors and warnings).
///
/// Counts are summed; so are `conns`, `in_flight`, `fd_limit` and `source_addrs`,
/// each agent's own budget. `open_secs` is the slowest agent's opening and `held_secs`
/// the shortest hold, so every connection counted was held at least that long; the
/// window is the union of the agents' windows.
pub fn merge_hold(reports: &[(String, HoldMerge)]) -> Result<HoldMerge, MergeError> {
    let Some((first_name, first)) = reports.first() else {
        return Err(MergeError::Empty);
    };
    let want = hold_identity(&first.report);
    for (name, r) in &reports[1..] {
        for ((field, a), (_, b)) in want.iter().zip(hold_identity(&r.report)) {
            if *a != b {
                return Err(MergeError::Mismatch {
                    field,
                    first_name: first_name.clone(),
                    first: a.clone(),
                    other_name: name.clone(),
                    other: b,
                });
            }
        }
    }
    let mut rtt = histogram();
    let mut out = first.report.clone();
    let mut errors = RttErrors::default();
    let mut warnings: Vec<String> = Vec::new();
    let mut addrs: Vec<&str> = Vec::new();
    let (mut agents, mut views) = (0, 0);
    out.conns = 0;
    out.in_flight = 0;
    out.opened = 0;
    out.failed = 0;
    out.failed_by_errno.clear();
    out.answered_ok = 0;
    out.closed_while_holding = 0;
    out.interrupted = false;
    out.source_addrs = 0;
    out.fd_limit = 0;
    out.processes = 0;
    out.open_secs = 0.0;
    out.held_secs = f64::INFINITY;
    out.duration_secs = 0.0;
    out.start_late_secs = None;
    for (name, m) in reports {
        let r = &m.report;
        add_histogram(&mut rtt, name, "round-trip", &r.histogram)?;
        out.conns += r.conns;
        out.in_flight += r.in_flight;
        out.opened += r.opened;
        out.failed += r.failed;
        for (errno, n) in &r.failed_by_errno {
            *out.failed_by_errno.entry(errno.clone()).or_default() += n;
        }
        out.answered_ok += r.answered_ok;
        errors.timeout += r.rtt_errors.timeout;
        errors.mismatch += r.rtt_errors.mismatch;
        errors.closed_early += r.rtt_errors.closed_early;
        errors.io += r.rtt_errors.io;
        errors.not_tried += r.rtt_errors.not_tried;
        out.closed_while_holding += r.closed_while_holding;
        out.interrupted |= r.interrupted; // one agent stopped early: so did the whole
        out.source_addrs += r.source_addrs;
        out.fd_limit += r.fd_limit;
        out.processes += r.processes.max(1);
        out.open_secs = out.open_secs.max(r.open_secs);
        out.held_secs = out.held_secs.min(r.held_secs);
        out.duration_secs = out.duration_secs.max(r.duration_secs);
        out.start_late_secs = match (out.start_late_secs, r.start_late_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if !addrs.contains(&r.addr.as_str()) {
            addrs.push(&r.addr);
        }
        agents += m.agents();
        views += m.server_views();
        for w in &m.merge_warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
    }
    let windows: Vec<_> = reports
        .iter()
        .map(|(n, m)| {
            (
                n.as_str(),
                m.report.window_start_unix,
                m.report.window_end_unix,
            )
        })
        .collect();
    warnings.extend(lonely_windows(&windows, "hold connections"));
    out.window_start_unix = windows.iter().map(|w| w.1).fold(f64::INFINITY, f64::min);
    out.window_end_unix = windows
        .iter()
        .map(|w| w.2)
        .fold(f64::NEG_INFINITY, f64::max);
    out.addr = addrs.join(",");
    out.rtt_errors = errors;
    out.rtt_us = rtt_of(&rtt);
    out.histogram = encode_histogram(&rtt);
    out.open_per_sec = if out.open_secs > 0.0 {
        out.opened as f64 / out.open_secs
    } else {
        0.0
    };
    // One view of the server is a fact; several are one server seen several times.
    out.server = match views {
        1 => reports.iter().find_map(|(_, m)| m.report.server.clone()),
        _ => None,
    };
    // The kernel's memory is the machine's: the same rule.
    let kernels: Vec<_> = reports
        .iter()
        .filter_map(|(_, m)| m.report.kernel.clone())
        .collect();
    out.kernel = match kernels.len() {
        1 => kernels.into_iter().next(),
        _ => None,
    };
    if views > 1 {
        let w = format!(
            "server figures dropped: {views} agents each read the server's /proc (rss, threads, \
             children); they are views of one server, which do not add up, and none counts \
             the others' connections; give --pid to one agent only to keep them"
        );
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    Ok(HoldMerge {
        report: out,
        agents,
        server_views: Some(views),
        merge_warnings: warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A report as one agent that saw exactly these latencies (ns) would write it.
    fn report(samples: &[u64], window: (f64, f64)) -> LoadReport {
        let mut h = histogram();
        for &s in samples {
            h.record(s).unwrap();
        }
        let ok = samples.len() as u64;
        LoadReport {
            addr: "10.0.0.1:25000".into(),
            service: "echo".into(),
            mode: "closed".into(),
            conns: 2,
            threads: 1,
            pipeline: 1,
            rate: None,
            elapsed_secs: window.1 - window.0,
            // As a report from before runs were recorded: the run is the window.
            run_secs: None,
            requests_ok: ok,
            requests_sent: ok + 3,
            requests_failed: 2,
            requests_unfinished: 1,
            errors_total: 1,
            errors: ErrorCounts {
                timeout: 1,
                ..ErrorCounts::default()
            },
            first_mismatch: None,
            req_per_s: 0.0,
            mb_per_s: 0.0,
            bytes_sent: ok * 64,
            bytes_received: ok * 74,
            latency_us: Latency::from_histogram(&h),
            heavy: None,
            cpu: None,
            window_start_unix: window.0,
            window_end_unix: window.1,
            run_end_unix: None,
            start_late_secs: None,
            size: 64,
            n: 0,
            prefix: "Received: ".into(),
            question: false,
            duration_secs: Some(window.1 - window.0),
            requests: None,
            agents: 1,
            histogram: encode_histogram(&h),
            merge_warnings: Vec::new(),
        }
    }

    fn named(reports: Vec<LoadReport>) -> Vec<(String, LoadReport)> {
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("agent{i}.json"), r))
            .collect()
    }

    proptest! {
        /// Three agents merged are one agent that saw every sample: the same
        /// histogram, bucket for bucket, so the same percentiles; counters add up.
        #[test]
        fn three_agents_are_one_that_saw_everything(
            samples in prop::collection::vec((1u64..10_000_000_000, 0usize..3), 1..400),
        ) {
            let mut parts: [Vec<u64>; 3] = Default::default();
            for &(s, who) in &samples {
                parts[who].push(s);
            }
            let reports = named(parts.iter().map(|p| report(p, (100.0, 110.0))).collect());
            let merged = merge(&reports).unwrap();
            let all: Vec<u64> = samples.iter().map(|&(s, _)| s).collect();
            let one = report(&all, (100.0, 110.0));
            let got = decode_histogram(&merged.histogram).unwrap();
            let want = decode_histogram(&one.histogram).unwrap();
            prop_assert!(got == want);
            prop_assert_eq!(got.len(), all.len() as u64);
            prop_assert_eq!(merged.latency_us, one.latency_us);
            prop_assert_eq!(merged.requests_ok, all.len() as u64);
            prop_assert_eq!(merged.requests_sent, all.len() as u64 + 9);
            prop_assert_eq!(
                merged.requests_sent,
                merged.requests_ok + merged.requests_failed + merged.requests_unfinished
            );
            prop_assert_eq!((merged.errors.timeout, merged.errors_total), (3, 3));
            prop_assert_eq!((merged.conns, merged.agents), (6, 3));
            prop_assert_eq!(merged.bytes_received, all.len() as u64 * 74);
            prop_assert!(merged.merge_warnings.is_empty());
            // Merges nest: (a + b) + c is a + b + c.
            let ab = merge(&reports[..2]).unwrap();
            let nested = merge(&[("ab".into(), ab), reports[2].clone()]).unwrap();
            prop_assert!(decode_histogram(&nested.histogram).unwrap() == want);
            prop_assert_eq!(nested.agents, 3);
            prop_assert_eq!(nested.requests_ok, merged.requests_ok);
        }
    }

    /// A report whose server answered from `window.0` to `window.1` (Unix seconds)
    /// and whose run ended at `run_end`, with the rates such a report carries.
    fn answered(samples: &[u64], window: (f64, f64), run_end: f64) -> LoadReport {
        let mut r = report(samples, window);
        r.run_end_unix = Some(run_end);
        r.run_secs = Some(run_end - window.0);
        if r.requests_ok > 0 && r.elapsed_secs > 0.0 {
            r.req_per_s = r.requests_ok as f64 / r.elapsed_secs;
            r.mb_per_s = r.bytes_received as f64 / r.elapsed_secs / 1e6;
        }
        r
    }

    proptest! {
        /// Agents whose servers stopped answering at different times: the rates are
        /// over the joint answered window (first request to the last verified reply
        /// of any), the run is first start to last end, and both are exact under
        /// nesting, through JSON too; one report merged alone keeps its figures.
        #[test]
        fn answered_windows_and_runs_merge_exactly(
            agents in prop::collection::vec((0u32..1000, 0u32..1000, 0u32..1000, 0usize..30), 1..5),
            split in any::<prop::sample::Index>(),
        ) {
            let reports = named(agents.iter().map(|&(start, answered_for, idle, ok)| {
                let start = 1.7e9 + f64::from(start) / 100.0;
                let end = start + f64::from(answered_for) / 100.0;
                answered(&vec![1000; ok], (start, end), end + f64::from(idle) / 100.0)
            }).collect());
            let m = merge(&reports).unwrap();
            let rs = || reports.iter().map(|(_, r)| r);
            let start = rs().map(|r| r.window_start_unix).fold(f64::INFINITY, f64::min);
            let end = rs().map(|r| r.window_end_unix).fold(f64::NEG_INFINITY, f64::max);
            let run_end = rs().map(|r| r.run_end_unix()).fold(f64::NEG_INFINITY, f64::max);
            prop_assert_eq!((m.window_start_unix, m.window_end_unix), (start, end));
            prop_assert_eq!(m.run_end_unix, Some(run_end));
            prop_assert_eq!(m.elapsed_secs, end - start);
            prop_assert_eq!(m.run_secs, Some(run_end - start));
            prop_assert!(m.run_secs() >= m.elapsed_secs);
            let ok: u64 = rs().map(|r| r.requests_ok).sum();
            let rate = if ok > 0 && m.elapsed_secs > 0.0 { ok as f64 / m.elapsed_secs } else { 0.0 };
            prop_assert_eq!(m.req_per_s, rate);
            // Merges nest: (first k) + the rest is all at once.
            let k = split.index(reports.len()).max(1);
            let head = merge(&reports[..k]).unwrap();
            let head: LoadReport = serde_json::from_str(&serde_json::to_string(&head).unwrap()).unwrap();
            let nested = merge(&[&[("head".to_string(), head)], &reports[k..]].concat()).unwrap();
            prop_assert_eq!(
                (nested.window_start_unix, nested.window_end_unix, nested.run_end_unix),
                (m.window_start_unix, m.window_end_unix, m.run_end_unix)
            );
            prop_assert_eq!((nested.elapsed_secs, nested.run_secs), (m.elapsed_secs, m.run_secs));
            prop_assert_eq!((nested.req_per_s, nested.mb_per_s), (m.req_per_s, m.mb_per_s));
            // One report alone is itself.
            let (_, one) = &reports[0];
            let alone = merge(&reports[..1]).unwrap();
            prop_assert_eq!((alone.elapsed_secs, alone.run_secs()), (one.elapsed_secs, one.run_secs()));
            prop_assert_eq!((alone.req_per_s, alone.mb_per_s), (one.req_per_s, one.mb_per_s));
        }
    }

    #[test]
    fn rates_are_over_the_time_the_servers_answered() {
        // Both runs lasted 10 s; the servers stopped answering after 4 s and 3 s.
        let a = answered(&[1000; 300], (100.0, 104.0), 110.0);
        let b = answered(&[1000; 100], (100.0, 103.0), 110.0);
        let m = merge(&named(vec![a, b])).unwrap();
        assert_eq!((m.elapsed_secs, m.run_secs), (4.0, Some(10.0)));
        assert_eq!(m.req_per_s, 400.0 / 4.0);
        assert!(m.merge_warnings.is_empty(), "{:?}", m.merge_warnings);
        // An agent that verified nothing loaded the server all the same: not flagged,
        // and its empty window neither adds time nor rate.
        let a = answered(&[1000; 300], (100.0, 104.0), 110.0);
        let none = answered(&[], (101.0, 101.0), 110.0);
        let m = merge(&named(vec![a, none])).unwrap();
        assert!(m.merge_warnings.is_empty(), "{:?}", m.merge_warnings);
        assert_eq!((m.requests_ok, m.elapsed_secs), (300, 4.0));
        // Nothing verified anywhere: no rate.
        let m = merge(&named(vec![answered(&[], (100.0, 100.0), 105.0)])).unwrap();
        assert_eq!((m.req_per_s, m.mb_per_s, m.run_secs), (0.0, 0.0, Some(5.0)));
    }

    #[test]
    fn throughput_is_over_the_window_the_agents_shared() {
        let a = report(&[1000; 300], (100.0, 110.0));
        let b = report(&[1000; 200], (101.0, 111.0));
        let m = merge(&named(vec![a, b])).unwrap();
        assert_eq!((m.window_start_unix, m.window_end_unix), (100.0, 111.0));
        assert_eq!(m.elapsed_secs, 11.0);
        assert_eq!(m.req_per_s, 500.0 / 11.0);
    }

    #[test]
    fn mismatches_are_refused_naming_the_field() {
        let base = report(&[5000], (0.0, 1.0));
        type Change = fn(&mut LoadReport);
        let cases: [(&str, Change); 6] = [
            ("service", |r| r.service = "fib".into()),
            ("size", |r| r.size = 65),
            ("prefix", |r| r.prefix = String::new()),
            ("mode", |r| r.mode = "open".into()),
            ("n", |r| r.n = 11),
            ("question", |r| r.question = true),
        ];
        for (field, change) in cases {
            let mut other = base.clone();
            change(&mut other);
            let e = merge(&named(vec![base.clone(), other])).unwrap_err();
            assert!(
                matches!(&e, MergeError::Mismatch { field: f, .. } if *f == field),
                "{field}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(field) && text.contains("agent1.json"),
                "{text}"
            );
            assert_eq!(text.lines().count(), 1);
        }
        assert_eq!(merge(&[]).unwrap_err(), MergeError::Empty);
        let mut blank = base.clone();
        blank.histogram.clear();
        let e = merge(&named(vec![base, blank])).unwrap_err();
        assert!(matches!(e, MergeError::Histogram { .. }), "{e}");
    }

    #[test]
    fn a_window_that_overlaps_no_other_is_flagged() {
        let a = report(&[1000], (100.0, 110.0));
        let b = report(&[1000], (105.0, 115.0));
        let late = report(&[1000], (200.0, 210.0));
        let m = merge(&named(vec![a.clone(), b.clone()])).unwrap();
        assert!(m.merge_warnings.is_empty());
        let m = merge(&named(vec![a, b, late])).unwrap();
        assert_eq!(m.merge_warnings.len(), 1, "{:?}", m.merge_warnings);
        assert!(m.merge_warnings[0].starts_with("agent2.json"));
        assert_eq!(m.requests_ok, 3, "flagged, not dropped");
    }

    /// A hold report as one agent that opened `conns` connections and timed these
    /// round trips (ns) would write it; `refused` connects failed with ECONNREFUSED.
    fn hold(samples: &[u64], conns: usize, refused: u64, window: (f64, f64)) -> HoldReport {
        let mut h = histogram();
        for &s in samples {
            h.record(s).unwrap();
        }
        let answered = samples.len() as u64;
        HoldReport {
            addr: "10.0.0.1:25000".into(),
            service: "echo".into(),
            conns,
            in_flight: 1,
            interrupted: false,
            opened: conns as u64 - refused,
            failed: refused,
            failed_by_errno: if refused > 0 {
                [("ECONNREFUSED".to_string(), refused)].into()
            } else {
                Default::default()
            },
            answered_ok: answered,
            rtt_errors: RttErrors {
                timeout: conns as u64 - refused - answered,
                ..RttErrors::default()
            },
            closed_while_holding: 1,
            open_secs: 0.5,
            held_secs: window.1 - window.0 - 1.0,
            source_addrs: 1,
            fd_limit: 1024,
            processes: 1,
            open_per_sec: (conns as u64 - refused) as f64 / 0.5,
            rtt_us: rtt_of(&h),
            server: None,
            kernel: None,
            window_start_unix: window.0,
            window_end_unix: window.1,
            start_late_secs: None,
            size: 16,
            n: 0,
            prefix: "Received: ".into(),
            duration_secs: 10.0,
            histogram: encode_histogram(&h),
        }
    }

    fn named_holds(reports: Vec<HoldReport>) -> Vec<(String, HoldMerge)> {
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("hold{i}.json"), r.into()))
            .collect()
    }

    fn server(pid: u32) -> crate::hold::ServerStats {
        crate::hold::ServerStats {
            pid,
            rss_before_bytes: 1_000_000,
            rss_holding_bytes: 3_000_000,
            pss_before_bytes: None,
            pss_holding_bytes: None,
            private_before_bytes: None,
            private_holding_bytes: None,
            memory: "rss".into(),
            threads_before: 1,
            threads_holding: 1,
            children_before: 0,
            children_holding: 0,
            processes_before: 1,
            processes_holding: 1,
        }
    }

    proptest! {
        /// Three hold agents merged are one agent that held every connection and
        /// timed every round trip: the same histogram, so the same percentiles; every
        /// counter is the sum.
        #[test]
        fn three_hold_agents_are_one_that_held_everything(
            samples in prop::collection::vec((1u64..10_000_000_000, 0usize..3), 1..400),
            refused in prop::collection::vec(0u64..5, 3),
        ) {
            let mut parts: [Vec<u64>; 3] = Default::default();
            for &(s, who) in &samples {
                parts[who].push(s);
            }
            // Each agent asked for room for its round trips, a timeout and its refusals.
            let conns: Vec<usize> = (0..3)
                .map(|i| parts[i].len() + 1 + refused[i] as usize)
                .collect();
            let reports = named_holds(
                (0..3)
                    .map(|i| hold(&parts[i], conns[i], refused[i], (100.0 + i as f64, 110.0 + i as f64)))
                    .collect(),
            );
            let merged = merge_hold(&reports).unwrap();
            let all: Vec<u64> = samples.iter().map(|&(s, _)| s).collect();
            let total: usize = conns.iter().sum();
            let refused_total: u64 = refused.iter().sum();
            let one = hold(&all, total, refused_total, (100.0, 112.0));
            let got = decode_histogram(&merged.report.histogram).unwrap();
            let want = decode_histogram(&one.histogram).unwrap();
            prop_assert!(got == want);
            prop_assert_eq!(got.len(), all.len() as u64);
            prop_assert_eq!(merged.report.rtt_us, one.rtt_us);
            let m = &merged.report;
            prop_assert_eq!((m.conns, m.opened, m.failed), (one.conns, one.opened, one.failed));
            prop_assert_eq!(&m.failed_by_errno, &one.failed_by_errno);
            prop_assert_eq!(m.answered_ok, all.len() as u64);
            prop_assert_eq!(&m.rtt_errors, &one.rtt_errors);
            prop_assert_eq!(m.opened, m.answered_ok + m.rtt_errors.total());
            prop_assert_eq!(m.closed_while_holding, 3);
            prop_assert_eq!((m.window_start_unix, m.window_end_unix), (100.0, 112.0));
            prop_assert_eq!((m.fd_limit, m.in_flight), (3 * 1024, 3));
            prop_assert_eq!(merged.agents, 3);
            prop_assert!(merged.merge_warnings.is_empty(), "{:?}", merged.merge_warnings);
            // Merges nest, through JSON too: (a + b) + c is a + b + c.
            let ab = merge_hold(&reports[..2]).unwrap();
            let ab: HoldMerge = serde_json::from_str(&serde_json::to_string(&ab).unwrap()).unwrap();
            let nested = merge_hold(&[("ab".into(), ab), reports[2].clone()]).unwrap();
            prop_assert_eq!(&nested, &merged);
        }
    }

    #[test]
    fn hold_mismatches_are_refused_naming_the_field() {
        let base = hold(&[5000], 2, 0, (0.0, 2.0));
        type Change = fn(&mut HoldReport);
        let cases: [(&str, Change); 4] = [
            ("service", |r| r.service = "fib".into()),
            ("size", |r| r.size = 17),
            ("n", |r| r.n = 11),
            ("prefix", |r| r.prefix = String::new()),
        ];
        for (field, change) in cases {
            let mut other = base.clone();
            change(&mut other);
            let e = merge_hold(&named_holds(vec![base.clone(), other])).unwrap_err();
            assert!(
                matches!(&e, MergeError::Mismatch { field: f, .. } if *f == field),
                "{field}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(field) && text.contains("hold1.json"),
                "{text}"
            );
            assert_eq!(text.lines().count(), 1);
        }
        assert_eq!(merge_hold(&[]).unwrap_err(), MergeError::Empty);
        let mut blank = base.clone();
        blank.histogram.clear();
        let e = merge_hold(&named_holds(vec![base, blank])).unwrap_err();
        assert!(matches!(e, MergeError::Histogram { .. }), "{e}");
    }

    #[test]
    fn server_figures_survive_only_from_a_single_view() {
        let plain = hold(&[1000], 1, 0, (0.0, 2.0));
        let mut seen = plain.clone();
        seen.server = Some(server(42));
        // One agent read /proc: its view is the merge's.
        let m = merge_hold(&named_holds(vec![plain.clone(), seen.clone()])).unwrap();
        assert_eq!(m.report.server, Some(server(42)));
        assert_eq!(m.server_views, Some(1));
        assert!(m.merge_warnings.is_empty(), "{:?}", m.merge_warnings);
        // Two did: neither view counts the other's connections; dropped, and said so.
        let m = merge_hold(&named_holds(vec![seen.clone(), plain, seen.clone()])).unwrap();
        assert_eq!(m.report.server, None);
        assert_eq!(m.server_views, Some(2));
        assert_eq!(m.merge_warnings.len(), 1, "{:?}", m.merge_warnings);
        assert!(m.merge_warnings[0].starts_with("server figures dropped: 2 agents"));
        // A merge that dropped them still counts its views when merged again.
        let again = merge_hold(&[("m".into(), m), ("s".into(), seen.into())]).unwrap();
        assert_eq!((again.report.server, again.server_views), (None, Some(3)));
        assert_eq!(again.agents, 4);
    }

    #[test]
    fn a_hold_window_that_overlaps_no_other_is_flagged() {
        let a = hold(&[1000], 1, 0, (100.0, 110.0));
        let late = hold(&[1000], 1, 0, (200.0, 210.0));
        let m = merge_hold(&named_holds(vec![a, late])).unwrap();
        assert_eq!(m.merge_warnings.len(), 2, "{:?}", m.merge_warnings);
        assert!(m.merge_warnings[1].contains("hold connections"));
        assert_eq!(
            (m.report.window_start_unix, m.report.window_end_unix),
            (100.0, 210.0)
        );
        assert_eq!(m.report.opened, 2, "flagged, not dropped");
    }
}
