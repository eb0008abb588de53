//! The fibload experiment's view.

use super::{View, failures, find, pts, servers_in};
use crate::lab::chart::{self, Series};
use crate::lab::fmt::cell;
use crate::lab::stats::Point;
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
    let mut answer = String::new();
    let mut parts = Vec::new();
    for (i, server) in cats.iter().enumerate() {
        let un = ms(find(&ps, server, "inline unloaded"), "p99_us");
        match (un, inline_p99[i], offload_p99[i]) {
            (Some(u), Some(l), Some(o)) => parts.push(format!("{server}: {u:.2} ms unloaded, {l:.2} ms inline under load, {o:.2} ms with --offload")),
            (Some(u), Some(l), None) => parts.push(format!("{server}: {u:.2} ms unloaded, {l:.2} ms under load")),
            _ => {}
        }
    }
    if !parts.is_empty() {
        let _ = write!(
            answer,
            "With one client asking fib({heavy}) in a loop, the fib(1) clients' p99 latency was: {}. ",
            parts.join("; ")
        );
        let stalled: Vec<&String> = cats
            .iter()
            .enumerate()
            .filter(|(i, _)| match (inline_p99[*i], offload_p99[*i]) {
                (Some(l), Some(o)) => l > 3.0 * o,
                _ => false,
            })
            .map(|(_, s)| s)
            .collect();
        if !stalled.is_empty() {
            let _ = write!(
                answer,
                "On an event loop a long computation stalls every client of that loop; handing it to a worker pool (--offload) removes the stall ({} showed it).",
                stalled
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    } else {
        answer = "Not measured.".into();
    }
    View {
        id: "fibload",
        title: "4. A fib server under CPU load",
        question: "Event loops work well when waiting for lots of I/O; what happens to the other clients when one request is CPU-bound (the talk's fib server on an event loop)?",
        answer,
        columns,
        rows,
        chart,
        failures: failures(&ps),
    }
}
