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
