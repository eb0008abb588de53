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
//! `concur hold` agents merge the same way ([`merge_hold`], which lives beside the
//! report it merges, in `hold/merge.rs`, since a spread hold merges its own
//! processes' reports with it): connections opened, failed and answered summed,
//! round-trip histograms added, the window the union of the agents'; the server's /proc
//! figures, views of one server, are kept only from a single agent's view.
//!
//! Layered so that nothing imports upward: the pieces both merges share (the errors,
//! the identity check, histograms read back and added, lonely windows) are
//! [`crate::report_merge`]'s, below `hold` and this module; `load`'s merge is here,
//! since only `concur merge` uses it; this module and [`command`] sit on top.
//!
//! No I/O here: reports in, a report or an error out ([`command::run`] reads files).

pub mod command;

pub use crate::hold::{HoldMerge, merge_hold};
use crate::load::report::{
    CpuReport, CpuUse, ErrorCounts, HeavyReport, Latency, LoadReport, encode_histogram, histogram,
};
pub use crate::report_merge::MergeError;
use crate::report_merge::{add_histogram, alike, lonely_windows};

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

/// Merge named reports (the names only label errors and warnings).
pub fn merge(reports: &[(String, LoadReport)]) -> Result<LoadReport, MergeError> {
    let first = alike(reports, identity)?;
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
        add_histogram(&mut light, name, "latency", &r.histogram)?;
        if let Some(h) = &r.heavy {
            add_histogram(&mut heavy, name, "heavy", &h.histogram)?;
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
    // Likewise the server's whole account: each agent read it over its own window.
    out.server = None;
    let views = reports.iter().filter(|(_, r)| r.server.is_some()).count();
    if views > 0 {
        warnings.push(format!(
            "the server's account (--server-pid) of {views} agent(s) is left out: each read \
             the same server over its own window, so the figures do not add"
        ));
    }
    out.agents = agents;
    out.start_late_secs = None;
    out.merge_warnings = warnings;
    Ok(out)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::decode_histogram;
    use crate::report_merge::assert_refused;
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
            server: None,
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
        type Change = fn(&mut LoadReport);
        let cases: [(&str, Change); 6] = [
            ("service", |r| r.service = "fib".into()),
            ("size", |r| r.size = 65),
            ("prefix", |r| r.prefix = String::new()),
            ("mode", |r| r.mode = "open".into()),
            ("n", |r| r.n = 11),
            ("question", |r| r.question = true),
        ];
        assert_refused(
            report(&[5000], (0.0, 1.0)),
            &cases,
            "agent1.json",
            |r| r.histogram.clear(),
            |rs| merge(&named(rs)),
        );
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
}
