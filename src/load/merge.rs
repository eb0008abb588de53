//! Merging the reports of several `concur load` agents into one exact report.
//!
//! One machine cannot load a large server, so users run agents on several. The trap
//! (reported by cassandra-stress, YCSB and autocannon users alike) is to average the
//! agents' percentiles: the mean of three p99s is not the p99 of the whole, and the
//! tail is exactly what it gets wrong. The only exact way is to add the agents' latency
//! histograms and read the percentiles from the sum; every report carries its whole
//! histogram for that (see [`super::report::encode_histogram`]).
//!
//! So a merge is: counters summed, histograms added, percentiles read from the sum,
//! throughput over the window the agents ran in together: from the first agent's start
//! to the last one's end (with `--start-at` and `--duration` they start and stop
//! together, and that window is each agent's own). The result has the schema of one
//! report, so merges nest: merging merges gives what merging all the agents at once
//! gives. Reports that measured different things (another service, payload size,
//! prefix, fib n or terminator, loop mode) are refused, naming the field; a report whose
//! window overlaps no other's is kept but flagged, since it did not load the server at
//! the same time as the others.
//!
//! No I/O here: reports in, a report or an error out ([`super::run_merge`] reads files).

use super::report::{
    CpuReport, CpuUse, ErrorCounts, HeavyReport, Latency, LoadReport, decode_histogram,
    encode_histogram, histogram,
};
use hdrhistogram::Histogram;

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
        "{name}: its {what} histogram is missing or unreadable ({why}); was it made by `concur load --json`?"
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
    // A window that overlaps no other one's: this agent loaded the server alone.
    if reports.len() > 1 {
        for (i, (name, r)) in reports.iter().enumerate() {
            let overlaps = reports.iter().enumerate().any(|(j, (_, o))| {
                j != i
                    && r.window_start_unix < o.window_end_unix
                    && o.window_start_unix < r.window_end_unix
            });
            if !overlaps {
                warnings.push(format!(
                    "{name}: its window ({:.3} to {:.3}, Unix seconds) overlaps no other report's; \
                     it did not load the server at the same time",
                    r.window_start_unix, r.window_end_unix
                ));
            }
        }
    }
    let start = reports
        .iter()
        .map(|(_, r)| r.window_start_unix)
        .fold(f64::INFINITY, f64::min);
    let end = reports
        .iter()
        .map(|(_, r)| r.window_end_unix)
        .fold(f64::NEG_INFINITY, f64::max);
    let elapsed = (end - start).max(0.0);
    let secs = elapsed.max(1e-9);
    let requests = ok + heavy_ok;
    out.addr = addrs.join(",");
    out.conns = conns;
    out.threads = threads;
    out.rate = rate;
    out.elapsed_secs = elapsed;
    out.window_start_unix = start;
    out.window_end_unix = end;
    out.requests_ok = ok;
    out.requests_sent = sent;
    out.requests_failed = failed;
    out.requests_unfinished = unfinished;
    out.errors_total = errors.total();
    out.errors = errors;
    out.req_per_s = ok as f64 / secs;
    out.mb_per_s = bytes_received as f64 / secs / 1e6;
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
}
