//! The cpu experiment's view.

use super::{View, failures, find, pts};
use crate::lab::chart::{self, Series};
use crate::lab::fmt::secs3;
use crate::lab::results::SAME_N_CASE;
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

/// `fib(40)x4`, or the list itself when its n differ.
fn list_name(ns: &[u64]) -> String {
    match ns.first() {
        Some(&n) if ns.iter().all(|&x| x == n) => format!("fib({n})x{}", ns.len()),
        _ => ns
            .iter()
            .map(|n| format!("fib({n})"))
            .collect::<Vec<_>>()
            .join("+"),
    }
}

pub fn view(points: &[Point]) -> View {
    let ps = pts(points, "cpu");
    let get = |server: &str, mode: &str, metric: &str| {
        find(&ps, server, &format!("mode={mode}")).and_then(|p| p.get(metric))
    };
    let list_of = |server: &str, case: &str| -> Vec<u64> {
        find(&ps, server, case)
            .and_then(|p| p.params.get("n"))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default()
    };
    let rust_list = list_of("rust", "mode=sequential");
    let py_list = list_of("python", "mode=sequential");
    let mut rows: Vec<Vec<String>> = FIB_MODES
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
    // One naive fib(n) per call, Rust against CPython on the same n.
    let same = find(&ps, "rust", SAME_N_CASE).and_then(|p| p.get("wall_secs"));
    let py_seq = get("python", "sequential", "wall_secs");
    let per_call = match (same, py_seq, py_list.first()) {
        (Some(r), Some(p), Some(&n)) if r > 0.0 && !py_list.is_empty() => {
            let calls = py_list.len() as f64;
            rows.push(vec![
                format!("one fib({n}) call, same n in both"),
                format!("{:.3} ms", r / calls * 1e3),
                "-".into(),
                format!("{:.3} ms", p / calls * 1e3),
                "-".into(),
            ]);
            Some((n, r / calls, p / calls, p / r))
        }
        _ => None,
    };
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
    if let Some((n, r, p, x)) = per_call {
        let _ = write!(
            answer,
            " The two languages ran different lists (Rust {}, CPython {}), so compare speedups, not wall times, across them; per call on the same n, one naive fib({n}) took {:.3} ms in Rust and {:.1} ms in CPython: Rust was {x:.0}x faster.",
            list_name(&rust_list),
            list_name(&py_list),
            r * 1e3,
            p * 1e3
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
        columns: vec![
            "mode".into(),
            format!("Rust wall s, {}", list_name(&rust_list)),
            "Rust speedup".into(),
            format!("CPython wall s, {}", list_name(&py_list)),
            "CPython speedup".into(),
        ],
        rows,
        chart,
        failures: failures(&ps),
        notes: Vec::new(),
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

    #[test]
    fn lists_are_named_and_one_call_compared_on_the_same_n() {
        let with_n = |mut p: Point, ns: &[u64]| {
            p.params.insert("n".into(), serde_json::json!(ns));
            p
        };
        let r = results(vec![
            with_n(
                point("cpu", "rust", "mode=sequential", &[("wall_secs", 2.0)]),
                &[40; 4],
            ),
            with_n(
                point("cpu", "python", "mode=sequential", &[("wall_secs", 1.2)]),
                &[30; 4],
            ),
            with_n(
                point("cpu", "rust", SAME_N_CASE, &[("wall_secs", 0.012)]),
                &[30; 4],
            ),
        ]);
        let v = view(&r.points);
        assert_eq!(v.columns[1], "Rust wall s, fib(40)x4");
        assert_eq!(v.columns[3], "CPython wall s, fib(30)x4");
        assert!(v.answer.contains("one naive fib(30) took 3.000 ms in Rust and 300.0 ms in CPython: Rust was 100x faster"), "{}", v.answer);
        assert!(
            v.rows
                .iter()
                .any(|r| r[0] == "one fib(30) call, same n in both")
        );
    }
}
