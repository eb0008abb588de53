//! The fibload experiment's view.

use super::{View, clearly_above, failures, find, join_and, leaders, pts, servers_in};
use crate::lab::chart::{self, Series};
use crate::lab::fmt::cell;
use crate::lab::stats::{Point, Stat};
use std::fmt::Write;

pub fn view(points: &[Point]) -> View {
    let ps = pts(points, "fibload");
    let columns = [
        "server",
        "fib",
        "unloaded req/s",
        "unloaded p99 ms",
        "loaded req/s",
        "loaded p99 ms",
        "heavy done",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    let mut cats = Vec::new();
    let mut inline_p99 = Vec::new();
    let mut offload_p99 = Vec::new();
    let ms = |p: Option<&Point>, k: &str| p.and_then(|p| p.get(k)).map(|x| x / 1000.0);
    for server in servers_in(&ps) {
        for mode in ["inline", "offload"] {
            let un = find(&ps, &server, &format!("{mode} unloaded"));
            let lo = find(&ps, &server, &format!("{mode} loaded"));
            if un.is_none() && lo.is_none() {
                continue;
            }
            rows.push(vec![
                server.clone(),
                mode.to_string(),
                cell(un.and_then(|p| p.get("req_per_s"))),
                ms(un, "p99_us").map_or("-".into(), |x| format!("{x:.2}")),
                cell(lo.and_then(|p| p.get("req_per_s"))),
                ms(lo, "p99_us").map_or("-".into(), |x| format!("{x:.2}")),
                cell(lo.and_then(|p| p.get("heavy_ok"))),
            ]);
        }
        cats.push(server.clone());
        inline_p99.push(ms(find(&ps, &server, "inline loaded"), "p99_us"));
        offload_p99.push(ms(find(&ps, &server, "offload loaded"), "p99_us"));
    }
    let mut series = vec![Series {
        name: "inline".into(),
        values: inline_p99.clone(),
    }];
    if offload_p99.iter().any(Option::is_some) {
        series.push(Series {
            name: "--offload".into(),
            values: offload_p99.clone(),
        });
    }
    let chart = chart::bars(
        "fib(1) p99 latency while one client computes a heavy fib",
        "p99 ms",
        &cats,
        &series,
    );
    let heavy = ps
        .iter()
        .find_map(|p| p.params.get("heavy_n").and_then(|v| v.as_u64()))
        .unwrap_or(0);
    let answer = answer(&ps, &cats, heavy);
    View {
        id: "fibload",
        title: "4. A fib server under CPU load",
        question: "Event loops work well when waiting for lots of I/O; what happens to the other clients when one request is CPU-bound (the talk's fib server on an event loop)?",
        answer,
        columns,
        rows,
        chart,
        failures: failures(&ps),
        notes: Vec::new(),
    }
}

/// A p99 in ms with the spread of its repeats: `45.91 ms (44.10–47.02)`.
fn ms_spread(s: &Stat) -> String {
    let ms = |us: f64| us / 1000.0;
    if s.runs.len() < 2 || s.min == s.max {
        format!("{:.2} ms", ms(s.median))
    } else {
        format!("{:.2} ms ({:.2}–{:.2})", ms(s.median), ms(s.min), ms(s.max))
    }
}

/// The answer, with the rule of every answer: a server is named lowest, and a stall
/// shown, only where the gap is larger than the spread of the repeats.
fn answer(ps: &[&Point], cats: &[String], heavy: u64) -> String {
    let p99 =
        |server: &str, case: &str| find(ps, server, case).and_then(|p| p.metrics.get("p99_us"));
    let mut parts = Vec::new();
    for server in cats {
        let un = p99(server, "inline unloaded");
        let (inline, offload) = (p99(server, "inline loaded"), p99(server, "offload loaded"));
        match (un, inline, offload) {
            (Some(u), Some(l), Some(o)) => parts.push(format!(
                "{server}: {} unloaded, {} inline under load, {} with --offload",
                ms_spread(u),
                ms_spread(l),
                ms_spread(o)
            )),
            (Some(u), Some(l), None) => parts.push(format!(
                "{server}: {} unloaded, {} under load",
                ms_spread(u),
                ms_spread(l)
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        return "Not measured.".into();
    }
    let mut answer = format!(
        "With one client asking fib({heavy}) in a loop, the fib(1) clients' p99 latency was: {}. ",
        parts.join("; ")
    );
    // Under load, every configuration ranked by its p99, lowest first.
    let mut loaded: Vec<(String, &Stat)> = Vec::new();
    for server in cats {
        if let Some(s) = p99(server, "inline loaded") {
            let with_offload = p99(server, "offload loaded").is_some();
            let name = if with_offload {
                format!("{server} inline")
            } else {
                server.clone()
            };
            loaded.push((name, s));
        }
        if let Some(s) = p99(server, "offload loaded") {
            loaded.push((format!("{server} with --offload"), s));
        }
    }
    loaded.sort_by(|a, b| a.1.median.total_cmp(&b.1.median));
    let ranked: Vec<(&str, &Stat)> = loaded.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    match leaders(&ranked, false)[..] {
        [] => {}
        [one] => {
            let _ = write!(
                answer,
                "Under load the lowest p99 was {one}: {}. ",
                ms_spread(ranked[0].1)
            );
        }
        ref tied => {
            let _ = write!(
                answer,
                "Under load {} tie for the lowest p99 (around {:.2} ms): their repeats overlap. ",
                join_and(tied),
                ranked[0].1.median / 1000.0
            );
        }
    }
    // The stall: inline above --offload by more than the spread of either.
    let (mut stalled, mut unclear) = (Vec::new(), Vec::new());
    for server in cats {
        if let (Some(l), Some(o)) = (p99(server, "inline loaded"), p99(server, "offload loaded")) {
            if clearly_above(l, o) {
                stalled.push(server.as_str());
            } else {
                unclear.push(server.as_str());
            }
        }
    }
    if !stalled.is_empty() {
        let _ = write!(
            answer,
            "On an event loop a long computation stalls every client of that loop; handing it to a worker pool (--offload) removes the stall ({} showed it: every inline run above every --offload run). ",
            join_and(&stalled)
        );
    }
    if !unclear.is_empty() {
        let _ = write!(
            answer,
            "For {} inline and --offload overlapped: this run cannot tell them apart.",
            join_and(&unclear)
        );
    }
    answer.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fib(server: &str, case: &str, p99_ms: &[f64]) -> Point {
        let mut p = Point::new("fibload", server, case);
        let runs: Vec<BTreeMap<String, f64>> = p99_ms
            .iter()
            .map(|&ms| {
                [
                    ("p99_us".to_string(), ms * 1000.0),
                    ("req_per_s".to_string(), 1000.0),
                ]
                .into()
            })
            .collect();
        p.set_runs(&runs);
        p.params.insert("heavy_n".into(), 36.into());
        p
    }

    #[test]
    fn a_winner_and_a_stall_only_beyond_the_spread() {
        let points = vec![
            fib("epoll", "inline unloaded", &[0.1, 0.2, 0.15]),
            fib("epoll", "inline loaded", &[40.0, 45.0, 50.0]),
            fib("epoll", "offload loaded", &[1.2, 1.4, 1.6]),
            fib("select", "inline unloaded", &[0.1, 0.2, 0.15]),
            fib("select", "inline loaded", &[2.0, 30.0, 3.0]),
            fib("select", "offload loaded", &[1.0, 2.5, 1.5]),
            fib("threads", "inline unloaded", &[0.1, 0.2, 0.15]),
            fib("threads", "inline loaded", &[0.16, 0.2, 0.18]),
        ];
        let v = view(&points);
        let a = &v.answer;
        assert!(
            a.contains(
                "epoll: 0.15 ms (0.10–0.20) unloaded, 45.00 ms (40.00–50.00) inline under load"
            ),
            "{a}"
        );
        assert!(
            a.contains("Under load the lowest p99 was threads: 0.18 ms (0.16–0.20)"),
            "{a}"
        );
        assert!(a.contains("(epoll showed it"), "{a}");
        assert!(
            a.contains("For select inline and --offload overlapped"),
            "{a}"
        );
        // Overlapping repeats at the top: a tie, no winner.
        let tie = view(&[
            fib("a", "inline loaded", &[1.0, 2.0]),
            fib("a", "inline unloaded", &[1.0]),
            fib("b", "inline loaded", &[1.5, 2.5]),
            fib("b", "inline unloaded", &[1.0]),
        ]);
        assert!(
            tie.answer
                .contains("Under load a and b tie for the lowest p99"),
            "{}",
            tie.answer
        );
        assert_eq!(view(&[]).answer, "Not measured.");
    }
}
