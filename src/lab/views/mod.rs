//! One view per experiment, built from the typed results: a table, a chart and an
//! answer computed from the numbers. Views know nothing of HTML or Markdown (the
//! render module lays them out) and draw their charts through `chart`, which knows
//! nothing of them: results -> views -> render, with chart and fmt below, no cycle.

mod cpu;
mod echo;
mod fibload;
mod scaling;

use super::fmt::human;
use super::results::{Results, ServerInfo};
use super::servers::Family;
use super::stats::{Point, Stat};

/// One experiment ready to show.
pub struct View {
    pub id: &'static str,
    pub title: &'static str,
    /// The talk's question this experiment answers.
    pub question: &'static str,
    pub answer: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub chart: String,
    pub failures: Vec<String>,
    /// Below the table: how its figures were measured, and what its errors were, in
    /// words.
    pub notes: Vec<String>,
}

pub(crate) fn pts<'a>(points: &'a [Point], exp: &str) -> Vec<&'a Point> {
    points.iter().filter(|p| p.experiment == exp).collect()
}

pub(crate) fn find<'a>(points: &[&'a Point], server: &str, case: &str) -> Option<&'a Point> {
    points
        .iter()
        .copied()
        .find(|p| p.server == server && p.case == case)
}

pub(crate) fn servers_in(points: &[&Point]) -> Vec<String> {
    let mut seen = Vec::new();
    for p in points {
        if !seen.contains(&p.server) {
            seen.push(p.server.clone());
        }
    }
    seen
}

pub(crate) fn failures(points: &[&Point]) -> Vec<String> {
    points
        .iter()
        .filter_map(|p| {
            p.error
                .as_ref()
                .map(|e| format!("{} ({}): {e}", p.server, p.case))
        })
        .collect()
}

/// Build every experiment's view from the points.
pub fn views(results: &Results) -> Vec<View> {
    vec![
        cpu::view(&results.points),
        echo::view(&results.points, &results.servers),
        scaling::view(&results.points),
        fibload::view(&results.points),
    ]
}

/// The family of a server: as the run declared it, else (a results.json from before
/// families were recorded) guessed from its name.
pub(crate) fn family_of(name: &str, servers: &[ServerInfo]) -> Family {
    if let Some(s) = servers.iter().find(|s| s.name == name) {
        return s.family;
    }
    if name.starts_with("python-") {
        Family::Python
    } else if crate::models::by_name(name).is_some() {
        if crate::lab::servers::TALK_MODELS.contains(&name) {
            Family::Talk
        } else {
            Family::Further
        }
    } else {
        Family::User
    }
}

/// A median with the spread of its repeats: `45k (44k–47k)`; the median alone for one run.
pub(crate) fn spread_cell(s: Option<&Stat>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.runs.len() < 2 || s.min == s.max => human(s.median),
        Some(s) => format!("{} ({}–{})", human(s.median), human(s.min), human(s.max)),
    }
}

/// The leaders of a ranking, with the rule every answer uses: a winner only where
/// the gap is larger than the spread of the repeats. `ranked` is best first (highest
/// median when `higher_is_better`, else lowest); every entry whose best run reaches the
/// leader's worst run ties with it. One name: a clear winner.
pub(crate) fn leaders<'a>(ranked: &[(&'a str, &Stat)], higher_is_better: bool) -> Vec<&'a str> {
    let Some((_, best)) = ranked.first() else {
        return Vec::new();
    };
    ranked
        .iter()
        .filter(|(_, s)| {
            if higher_is_better {
                s.max >= best.min
            } else {
                s.min <= best.max
            }
        })
        .map(|(n, _)| *n)
        .collect()
}

/// `a` is above `b` by more than the spread of their repeats: every run of `a`
/// above every run of `b`.
pub(crate) fn clearly_above(a: &Stat, b: &Stat) -> bool {
    a.min > b.max
}

/// A server's ceiling word (`one`, `threads`, `descriptors`...) as the run recorded
/// it, else, for a results.json from before it was, the registry's.
pub(crate) fn ceiling_of(name: &str, servers: &[ServerInfo]) -> Option<String> {
    match servers.iter().find(|s| s.name == name) {
        Some(s) => s.ceiling.clone(),
        None => crate::models::by_name(name).map(|m| m.ceiling.name().to_string()),
    }
}

/// "a", "a and b", "a, b and c".
pub(crate) fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The connection count a point was measured at.
pub(crate) fn conns_of(p: &Point) -> Option<f64> {
    p.params.get("conns").and_then(|v| v.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_tie_when_the_repeats_overlap() {
        let s = |runs: &[f64]| Stat::of(runs.to_vec()).unwrap();
        let (a, b, c) = (s(&[90.0, 100.0]), s(&[95.0, 99.0]), s(&[40.0, 41.0]));
        assert_eq!(
            leaders(&[("a", &a), ("b", &b), ("c", &c)], true),
            ["a", "b"]
        );
        assert_eq!(leaders(&[("a", &a), ("c", &c)], true), ["a"]);
        // Lower is better: latency.
        let (x, y) = (s(&[1.0, 2.0]), s(&[1.5, 3.0]));
        assert_eq!(leaders(&[("x", &x), ("y", &y)], false), ["x", "y"]);
        assert_eq!(leaders(&[("x", &x), ("c", &c)], false), ["x"]);
        assert!(clearly_above(&c, &x) && !clearly_above(&y, &x));
        assert!(leaders(&[], true).is_empty());
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::super::results::{Machine, Results};
    use super::super::stats::Point;
    use std::collections::BTreeMap;

    pub fn point(exp: &str, server: &str, case: &str, metrics: &[(&str, f64)]) -> Point {
        let mut p = Point::new(exp, server, case);
        p.set_runs(&[metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect()]);
        p
    }

    pub fn results(points: Vec<Point>) -> Results {
        Results {
            concur_version: "test".into(),
            started_unix: 0,
            machine: Machine::read(None),
            params: serde_json::json!({}),
            pinned: true,
            interrupted: false,
            points,
            answers: BTreeMap::new(),
            notes: vec![],
            commands: BTreeMap::new(),
            servers: vec![],
            experiment_secs: BTreeMap::new(),
            scaling_limits: None,
        }
    }
}
