//! One view per experiment, built from the typed results: a table, a chart and an
//! answer computed from the numbers. Views know nothing of HTML or Markdown (the
//! render module lays them out) and draw their charts through `chart`, which knows
//! nothing of them: results -> views -> render, with chart and fmt below, no cycle.

mod cpu;
mod echo;
mod fibload;
mod scaling;

use super::results::Results;
use super::stats::Point;

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
        echo::view(&results.points),
        scaling::view(&results.points),
        fibload::view(&results.points),
    ]
}

/// The connection count a point was measured at.
pub(crate) fn conns_of(p: &Point) -> Option<f64> {
    p.params.get("conns").and_then(|v| v.as_f64())
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
        }
    }
}
