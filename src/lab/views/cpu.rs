//! The cpu experiment's view.

use super::{View, failures, find, pts};
use crate::lab::chart::{self, Series};
use crate::lab::fmt::secs3;
use crate::lab::stats::Point;
use std::fmt::Write;

const FIB_MODES: [&str; 6] = [
    "sequential",
    "threads",
    "broken (as reported)",
    "broken (joined)",
    "processes",
    "pool",
];

pub fn view(points: &[Point]) -> View {
    let ps = pts(points, "cpu");
    let get = |server: &str, mode: &str, metric: &str| {
        find(&ps, server, &format!("mode={mode}")).and_then(|p| p.get(metric))
    };
    let rows: Vec<Vec<String>> = FIB_MODES
        .iter()
        .map(|m| {
            let wrong = if m.contains("reported") {
                " (wrong: no join)"
            } else {
                ""
            };
            vec![
                format!("{m}{wrong}"),
                secs3(get("rust", m, "wall_secs")),
                get("rust", m, "speedup").map_or("-".into(), |x| format!("{x:.2}x")),
                secs3(get("python", m, "wall_secs")),
                get("python", m, "speedup").map_or("-".into(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    let plotted = ["sequential", "threads", "processes", "pool"];
    let series: Vec<Series<Vec<Option<f64>>>> = ["rust", "python"]
        .iter()
        .filter(|s| ps.iter().any(|p| p.server == **s))
        .map(|s| Series {
            name: if *s == "rust" {
                "Rust".into()
            } else {
                "CPython".into()
            },
            values: plotted.iter().map(|m| get(s, m, "speedup")).collect(),
        })
        .collect();
    let cats: Vec<String> = plotted.iter().map(|s| s.to_string()).collect();
    let chart = chart::bars(
        "fib list: speedup against sequential",
        "speedup (x)",
        &cats,
        &series,
    );
    let cores = crate::sys::cores();
    let mut answer = String::new();
    if let (Some(t), Some(p)) = (
        get("rust", "threads", "speedup"),
        get("rust", "processes", "speedup"),
    ) {
        let why = if t.min(p) > 0.75 * cores.min(4) as f64 {
            format!("with no global lock both spread the work over the {cores} cores")
        } else if t > p * 1.15 {
            "threads start faster than processes, and on a list this short start-up shows"
                .to_string()
        } else {
            format!(
                "neither got near {cores}x on this run: the list is short or the machine was busy"
            )
        };
        let _ = write!(
            answer,
            "In Rust, threads ran the list {t:.2}x faster than sequential and processes {p:.2}x: {why}. "
        );
    }
    if let (Some(t), Some(p)) = (
        get("python", "threads", "speedup"),
        get("python", "processes", "speedup"),
    ) {
        let verdict = if t < 1.2 && p > t * 1.3 {
            "the GIL lets only one thread run Python code at a time, so in CPython multi-processing is the faster answer for CPU-bound work"
        } else if p > t {
            "processes beat threads in CPython on this run"
        } else {
            "threads kept up with processes in CPython on this run (is this a free-threaded Python?)"
        };
        let _ = write!(
            answer,
            "In CPython, threads ran {t:.2}x and processes {p:.2}x: {verdict}. "
        );
    }
    if let (Some(r), Some(j)) = (
        get("rust", "broken (as reported)", "wall_secs"),
        get("rust", "broken (joined)", "wall_secs"),
    ) {
        let _ = write!(
            answer,
            "The dispatcher that forgets join() reports {:.3} ms; after joining, the same work took {:.3} s.",
            r * 1e3,
            j
        );
    }
    if answer.is_empty() {
        answer = "Not measured.".into();
    }
    View {
        id: "cpu",
        title: "1. CPU-bound: threads or processes?",
        question: "In Python, which technique will be faster for (concurrently) solving a list of Fibonacci numbers: multi-threading or multi-processing? Why?",
        answer,
        columns: [
            "mode",
            "Rust wall s",
            "Rust speedup",
            "CPython wall s",
            "CPython speedup",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        chart,
        failures: failures(&ps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::views::testing::{point, results};

    #[test]
    fn cpu_answer_is_computed_from_numbers() {
        let r = results(vec![
            point(
                "cpu",
                "rust",
                "mode=threads",
                &[("speedup", 1.9), ("wall_secs", 1.0)],
            ),
            point("cpu", "rust", "mode=processes", &[("speedup", 1.8)]),
            point("cpu", "python", "mode=threads", &[("speedup", 0.95)]),
            point("cpu", "python", "mode=processes", &[("speedup", 1.7)]),
        ]);
        let v = view(&r.points);
        assert!(
            v.answer.contains("1.90x") && v.answer.contains("1.80x"),
            "{}",
            v.answer
        );
        assert!(v.answer.contains("GIL"), "{}", v.answer);
        let slower = results(vec![
            point("cpu", "python", "mode=threads", &[("speedup", 1.9)]),
            point("cpu", "python", "mode=processes", &[("speedup", 1.0)]),
        ]);
        assert!(!view(&slower.points).answer.contains("GIL"));
    }
}
