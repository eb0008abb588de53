//! Merging the reports of several `concur hold` agents (or of a spread hold's
//! processes) into one exact report: hold's half of `concur merge`, kept beside the
//! report it merges so that a spread hold ([`super::spread`]) merges its children's
//! reports without reaching up to the command. How merging works, and why histograms
//! are added rather than percentiles averaged, is told in `merge`'s module doc; the
//! pieces both merges share are [`crate::report_merge`]'s.
//!
//! `concur hold` agents merge the way `concur load` agents do: one machine (or one
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

use super::{HoldReport, RttErrors, rtt_of};
use crate::load::report::{encode_histogram, histogram};
use crate::report_merge::{MergeError, add_histogram, alike, lonely_windows};
use serde::{Deserialize, Serialize};

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

/// Merge named `concur hold` reports (the names only label errors and warnings).
///
/// Counts are summed; so are `conns`, `in_flight`, `fd_limit` and `source_addrs`,
/// each agent's own budget. `open_secs` is the slowest agent's opening and `held_secs`
/// the shortest hold, so every connection counted was held at least that long; the
/// window is the union of the agents' windows.
pub fn merge_hold(reports: &[(String, HoldMerge)]) -> Result<HoldMerge, MergeError> {
    let first = alike(reports, |m: &HoldMerge| hold_identity(&m.report))?;
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
    use crate::load::report::decode_histogram;
    use crate::report_merge::assert_refused;
    use proptest::prelude::*;

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
            account: None,
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
        type Change = fn(&mut HoldReport);
        let cases: [(&str, Change); 4] = [
            ("service", |r| r.service = "fib".into()),
            ("size", |r| r.size = 17),
            ("n", |r| r.n = 11),
            ("prefix", |r| r.prefix = String::new()),
        ];
        assert_refused(
            hold(&[5000], 2, 0, (0.0, 2.0)),
            &cases,
            "hold1.json",
            |r| r.histogram.clear(),
            |rs| merge_hold(&named_holds(rs)),
        );
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
