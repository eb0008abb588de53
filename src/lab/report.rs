//! From points to answers: one view per experiment (table, chart, and a plain-language
//! answer computed from the numbers), written as `report.html`, `summary.md` and
//! `results.json`; and `--compare`, which lines up two `results.json` point by point.

use super::chart::{self, Series, human};
use super::stats::Point;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Everything a lab run measured, as `results.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub concur_version: String,
    /// Unix seconds when the run started.
    pub started_unix: u64,
    pub machine: Machine,
    /// The exact parameters of the run.
    pub params: serde_json::Value,
    /// Server pinned to core 0 and load to core 1.
    pub pinned: bool,
    /// Ctrl-C stopped the run before the end: what is here is what was measured.
    pub interrupted: bool,
    pub points: Vec<Point>,
    /// Experiment id to its computed answer.
    pub answers: BTreeMap<String, String>,
    /// Things that went wrong outside any one point (e.g. a server that ignored SIGTERM).
    pub notes: Vec<String>,
}

/// The machine's facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub python: Option<String>,
}

impl Machine {
    pub fn read(python: Option<String>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .map_or_else(
                || std::env::consts::ARCH.to_string(),
                |s| s.trim().to_string(),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Machine {
            cores: crate::sys::cores(),
            kernel,
            cpu_model,
            memory_gib: mem_kb / 1048576.0,
            python,
        }
    }
}

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

pub const EXPERIMENTS: [&str; 4] = ["cpu", "echo", "scaling", "fibload"];

fn pts<'a>(points: &'a [Point], exp: &str) -> Vec<&'a Point> {
    points.iter().filter(|p| p.experiment == exp).collect()
}

fn find<'a>(points: &[&'a Point], server: &str, case: &str) -> Option<&'a Point> {
    points
        .iter()
        .copied()
        .find(|p| p.server == server && p.case == case)
}

fn servers_in(points: &[&Point]) -> Vec<String> {
    let mut seen = Vec::new();
    for p in points {
        if !seen.contains(&p.server) {
            seen.push(p.server.clone());
        }
    }
    seen
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), human)
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

fn secs3(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

fn failures(points: &[&Point]) -> Vec<String> {
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
        cpu_view(&results.points),
        echo_view(&results.points),
        scaling_view(&results.points),
        fibload_view(&results.points),
    ]
}

const FIB_MODES: [&str; 6] = [
    "sequential",
    "threads",
    "broken (as reported)",
    "broken (joined)",
    "processes",
    "pool",
];

fn cpu_view(points: &[Point]) -> View {
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

fn conns_of(p: &Point) -> Option<f64> {
    p.params.get("conns").and_then(|v| v.as_f64())
}

fn echo_view(points: &[Point]) -> View {
    let ps = pts(points, "echo");
    let mut conns: Vec<u64> = ps
        .iter()
        .filter(|p| p.params.get("size").and_then(|s| s.as_u64()) == Some(64))
        .filter_map(|p| conns_of(p).map(|c| c as u64))
        .collect();
    conns.sort_unstable();
    conns.dedup();
    let big_point = ps
        .iter()
        .find(|p| p.params.get("size").and_then(|s| s.as_u64()) == Some(4096));
    let big = big_point.map(|p| p.case.clone());
    let big_conns = big_point.and_then(|p| conns_of(p)).unwrap_or(100.0);
    let mid = if conns.contains(&100) {
        100
    } else {
        conns.last().copied().unwrap_or(0)
    };
    let mid_case = format!("conns={mid} size=64");
    let mut columns: Vec<String> = vec!["server".into()];
    columns.extend(conns.iter().map(|c| format!("req/s @{c}")));
    columns.push(format!("req/s 4KiB @{big_conns}"));
    columns.extend(
        [
            "p50 µs",
            "p99 µs",
            "CPU µs/req",
            "RSS MB",
            "threads",
            "ctx sw/req",
            "errors",
        ]
        .map(|s| s.to_string()),
    );
    // The per-request columns describe the middle connection count.
    for c in columns.iter_mut().skip(conns.len() + 2).take(6) {
        c.push_str(&format!(" @{mid}"));
    }
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for server in servers_in(&ps) {
        let mut row = vec![server.clone()];
        let mut line = Vec::new();
        for c in &conns {
            let v =
                find(&ps, &server, &format!("conns={c} size=64")).and_then(|p| p.get("req_per_s"));
            if let Some(v) = v {
                line.push((*c as f64, v));
            }
            row.push(cell(v));
        }
        row.push(cell(
            big.as_ref()
                .and_then(|b| find(&ps, &server, b))
                .and_then(|p| p.get("req_per_s")),
        ));
        let m = find(&ps, &server, &mid_case);
        let g = |k: &str| m.and_then(|p| p.get(k));
        row.extend([
            cell(g("p50_us")),
            cell(g("p99_us")),
            g("server_cpu_us_per_req").map_or("-".into(), |x| format!("{x:.1}")),
            cell(g("server_rss_mb")),
            cell(g("server_threads")),
            g("ctx_switches_per_req").map_or("-".into(), |x| format!("{x:.2}")),
        ]);
        let errors: Vec<f64> = ps
            .iter()
            .filter(|p| p.server == server)
            .filter_map(|p| p.get("errors"))
            .collect();
        row.push(if errors.is_empty() {
            "-".into()
        } else {
            human(errors.iter().sum())
        });
        rows.push(row);
        if !line.is_empty() {
            series.push(Series {
                name: server,
                values: line,
            });
        }
    }
    let chart = if conns.len() > 1 {
        chart::lines(
            "echo, 64-byte requests: throughput by connections",
            "concurrent connections",
            "requests/s",
            true,
            &series,
        )
    } else {
        // One connection count: a line would be a column of dots; bars read better.
        let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
        let values = series
            .iter()
            .map(|s| s.values.first().map(|p| p.1))
            .collect();
        chart::bars(
            &format!("echo, 64-byte requests at {mid} connections"),
            "requests/s",
            &names,
            &[Series {
                name: "req/s".into(),
                values,
            }],
        )
    };
    let at = |server: &str, c: u64, k: &str| {
        find(&ps, server, &format!("conns={c} size=64")).and_then(|p| p.get(k))
    };
    let mut answer = String::new();
    let ranked: Vec<(String, f64)> = {
        let mut v: Vec<(String, f64)> = servers_in(&ps)
            .into_iter()
            .filter_map(|s| at(&s, mid, "req_per_s").map(|r| (s, r)))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    if let (Some(best), Some(worst)) = (ranked.first(), ranked.last()) {
        let _ = write!(
            answer,
            "At {mid} connections the fastest server was {} ({} req/s) and the slowest {} ({} req/s). ",
            best.0,
            human(best.1),
            worst.0,
            human(worst.1)
        );
    }
    if let (Some(b), Some(t)) = (
        at("blocking", mid, "req_per_s"),
        at("threads", mid, "req_per_s"),
    ) {
        let alone = conns
            .first()
            .filter(|&&c| c < mid)
            .and_then(|&c| at("blocking", c, "req_per_s").map(|r| (c, r)))
            .map(|(c, r)| {
                format!(
                    " (with {c} connection{}: {})",
                    if c == 1 { "" } else { "s" },
                    human(r)
                )
            })
            .unwrap_or_default();
        let errs = at("blocking", mid, "errors").unwrap_or(0.0);
        let timeouts = if errs > 0.0 {
            format!(", and {} requests failed or timed out", human(errs))
        } else {
            String::new()
        };
        let _ = write!(
            answer,
            "The blocking server serves one client at a time while the rest wait in the listen backlog: at {mid} connections it managed {} req/s{alone} against {} for a thread per client{timeouts}. ",
            human(b),
            human(t),
        );
    }
    let cheapest = servers_in(&ps)
        .into_iter()
        .filter_map(|s| at(&s, mid, "server_cpu_us_per_req").map(|c| (s, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((s, c)) = cheapest {
        let _ = write!(
            answer,
            "The cheapest in CPU was {s} at {c:.1} µs of server CPU per request. "
        );
    }
    if let (Some(py), Some(rs)) = (
        at("python-asyncio", mid, "req_per_s"),
        at("async", mid, "req_per_s"),
    ) {
        let _ = write!(
            answer,
            "The talk's asyncio server reached {:.0}% of Rust's async model's throughput.",
            100.0 * py / rs.max(1e-9)
        );
    }
    if answer.is_empty() {
        answer = "Not measured.".into();
    }
    View {
        id: "echo",
        title: "2. I/O-bound: the echo server under every model",
        question: "The talk's echo server written blocking, thread per client, process per client, with select and with asyncio: what does each cost and how far does each go?",
        answer,
        columns,
        rows,
        chart,
        failures: failures(&ps),
    }
}

fn scaling_view(points: &[Point]) -> View {
    let ps = pts(points, "scaling");
    let mut rungs: Vec<u64> = ps
        .iter()
        .filter_map(|p| conns_of(p).map(|c| c as u64))
        .collect();
    rungs.sort_unstable();
    rungs.dedup();
    let mut columns = vec!["server".to_string(), "held".into()];
    for r in &rungs {
        columns.push(format!("{r}: open s"));
        columns.push(format!("{r}: KB/conn"));
    }
    columns.push("stopped because".into());
    let mut rows = Vec::new();
    let mut held = Vec::new();
    for server in servers_in(&ps) {
        let mine: Vec<&&Point> = ps.iter().filter(|p| p.server == server).collect();
        let best = mine
            .iter()
            .filter(|p| p.error.is_none())
            .filter_map(|p| conns_of(p))
            .fold(0.0f64, f64::max);
        let mut row = vec![server.clone(), human(best)];
        for r in &rungs {
            let p = mine.iter().find(|p| conns_of(p) == Some(*r as f64));
            row.push(cell(p.and_then(|p| p.get("open_secs"))));
            row.push(
                p.and_then(|p| p.get("rss_kb_per_conn"))
                    .map_or("-".into(), |x| format!("{x:.1}")),
            );
        }
        let why = mine
            .iter()
            .find_map(|p| p.error.clone())
            .unwrap_or_default();
        row.push(why);
        rows.push(row);
        held.push((server, best));
    }
    let cats: Vec<String> = held.iter().map(|h| h.0.clone()).collect();
    let chart = chart::bars(
        "connections held open and answered",
        "connections",
        &cats,
        &[Series {
            name: "held".into(),
            values: held.iter().map(|h| Some(h.1)).collect(),
        }],
    );
    let mut answer = String::new();
    if let Some(top) = rungs.last() {
        let full: Vec<&str> = held
            .iter()
            .filter(|h| h.1 >= *top as f64)
            .map(|h| h.0.as_str())
            .collect();
        if !full.is_empty() {
            let _ = write!(
                answer,
                "{} held all {} connections and answered each. ",
                full.join(", "),
                human(*top as f64)
            );
        }
        let mut lightest: Vec<(String, f64)> = ps
            .iter()
            .filter(|p| conns_of(p) == Some(*top as f64) && p.error.is_none())
            .filter_map(|p| p.get("rss_kb_per_conn").map(|k| (p.server.clone(), k)))
            .collect();
        lightest.sort_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((s, k)) = lightest.first() {
            let _ = write!(
                answer,
                "The lightest was {s} at {k:.1} KB of server memory per connection. "
            );
        }
    }
    let mut missing = Vec::new();
    let mut fails = Vec::new();
    for p in &ps {
        match (p.error.as_ref(), conns_of(p)) {
            (Some(e), Some(c)) => {
                fails.push(format!("{} at {}: {}", p.server, human(c), shorten(e, 160)))
            }
            (Some(_), None) => missing.push(p.server.clone()),
            _ => {}
        }
    }
    if !fails.is_empty() {
        let _ = write!(answer, "Where servers stopped: {}. ", fails.join("; "));
    }
    if !missing.is_empty() {
        let _ = write!(
            answer,
            "Not measured (could not start): {}.",
            missing.join(", ")
        );
    }
    if answer.is_empty() {
        answer = "Not measured.".into();
    }
    View {
        id: "scaling",
        title: "3. Scaling: tens of thousands of connections",
        question: "Processes and threads are good into the thousands; what if tens of thousands (or more) of concurrent connections need to be serviced?",
        answer,
        columns,
        rows,
        chart,
        failures: Vec::new(),
    }
}

fn fibload_view(points: &[Point]) -> View {
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

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML report.
pub fn html(results: &Results, views: &[View]) -> String {
    let m = &results.machine;
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>concur lab report</title>\n<style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0;font-size:0.9em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}\
blockquote{{color:#555;border-left:4px solid #ddd;margin:0;padding-left:1em}}.answer{{background:#eef6ee;padding:0.6em 1em}}\
.warn{{background:#fff3e0;padding:0.6em 1em}}code{{word-break:break-all}}</style></head><body>\n<h1>concur lab report</h1>\n"
    );
    let _ = writeln!(
        s,
        "<p>concur {} on {} cores ({}), kernel {}, {:.1} GiB{}.</p>",
        escape(&results.concur_version),
        m.cores,
        escape(&m.cpu_model),
        escape(&m.kernel),
        m.memory_gib,
        m.python.as_ref().map_or(
            String::from("; python3 not found, so no CPython references"),
            |p| format!("; CPython {}", escape(p))
        )
    );
    if results.pinned {
        s.push_str("<p>Each server ran pinned to core 0 and its load to core 1.</p>\n");
    } else {
        s.push_str("<p class=\"warn\">This machine has one core: servers and load shared it, so the load competes with the server it measures.</p>\n");
    }
    if results.interrupted {
        s.push_str("<p class=\"warn\">The run was interrupted: this report holds what was measured before.</p>\n");
    }
    let _ = writeln!(
        s,
        "<p>Parameters: <code>{}</code></p>",
        escape(&results.params.to_string())
    );
    for n in &results.notes {
        let _ = writeln!(s, "<p class=\"warn\">{}</p>", escape(n));
    }
    for v in views {
        let _ = writeln!(
            s,
            "<h2 id=\"{}\">{}</h2>\n<blockquote>{}</blockquote>",
            v.id,
            escape(v.title),
            escape(v.question)
        );
        let _ = writeln!(
            s,
            "<p class=\"answer\"><b>Answer:</b> {}</p>",
            escape(&v.answer)
        );
        let _ = writeln!(s, "<figure>{}</figure>", v.chart);
        s.push_str("<table><tr>");
        for c in &v.columns {
            let _ = write!(s, "<th>{}</th>", escape(c));
        }
        s.push_str("</tr>\n");
        for r in &v.rows {
            s.push_str("<tr>");
            for c in r {
                let _ = write!(s, "<td>{}</td>", escape(c));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        if !v.failures.is_empty() {
            s.push_str("<details><summary>failures and skipped points</summary><ul>");
            for f in &v.failures {
                let _ = write!(s, "<li>{}</li>", escape(f));
            }
            s.push_str("</ul></details>\n");
        }
    }
    s.push_str(
        "<p>Numbers are medians over repeats; results.json keeps every run.</p></body></html>\n",
    );
    s
}

/// The tables in Markdown.
pub fn markdown(results: &Results, views: &[View]) -> String {
    let mut s = String::from("# concur lab summary\n\n");
    let m = &results.machine;
    let _ = writeln!(
        s,
        "{} cores ({}), kernel {}, concur {}.\n",
        m.cores, m.cpu_model, m.kernel, results.concur_version
    );
    if results.interrupted {
        s.push_str("**Interrupted:** only what was measured before Ctrl-C.\n\n");
    }
    for n in &results.notes {
        let _ = writeln!(s, "**Note:** {n}\n");
    }
    for v in views {
        let _ = writeln!(
            s,
            "## {}\n\n> {}\n\n**Answer:** {}\n",
            v.title, v.question, v.answer
        );
        let _ = writeln!(s, "| {} |", v.columns.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(v.columns.len()));
        for r in &v.rows {
            let _ = writeln!(
                s,
                "| {} |",
                r.iter()
                    .map(|c| c.replace('|', "\\|"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        s.push('\n');
    }
    s
}

/// What changed between two runs, point by point, for the headline metrics.
pub fn compare(old: &Results, new: &Results) -> String {
    const METRICS: [&str; 8] = [
        "req_per_s",
        "p99_us",
        "server_cpu_us_per_req",
        "speedup",
        "wall_secs",
        "rss_kb_per_conn",
        "opened",
        "answered_ok",
    ];
    let old_points: BTreeMap<String, &Point> = old.points.iter().map(|p| (p.key(), p)).collect();
    let mut s = String::new();
    let mut matched = 0;
    for p in &new.points {
        let Some(o) = old_points.get(&p.key()) else {
            let _ = writeln!(s, "new      {}", p.key());
            continue;
        };
        matched += 1;
        for metric in METRICS {
            if let (Some(a), Some(b)) = (o.get(metric), p.get(metric)) {
                let change = if a.abs() > 1e-12 {
                    format!("{:+.1}%", (b - a) / a * 100.0)
                } else {
                    "n/a".into()
                };
                let _ = writeln!(
                    s,
                    "{:<58} {:<22} {:>10} -> {:>10}  {change}",
                    p.key(),
                    metric,
                    human(a),
                    human(b)
                );
            }
        }
    }
    let new_keys: Vec<String> = new.points.iter().map(Point::key).collect();
    for k in old_points.keys() {
        if !new_keys.contains(k) {
            let _ = writeln!(s, "gone     {k}");
        }
    }
    format!(
        "{matched} points in both runs (old: concur {}, new: concur {})\n{s}",
        old.concur_version, new.concur_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(exp: &str, server: &str, case: &str, metrics: &[(&str, f64)]) -> Point {
        let mut p = Point::new(exp, server, case);
        p.set_runs(&[metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect()]);
        p
    }

    fn results(points: Vec<Point>) -> Results {
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
        }
    }

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
        let v = cpu_view(&r.points);
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
        assert!(!cpu_view(&slower.points).answer.contains("GIL"));
    }

    #[test]
    fn echo_ranks_servers() {
        let r = results(vec![
            {
                let mut p = point(
                    "echo",
                    "epoll",
                    "conns=100 size=64",
                    &[("req_per_s", 90000.0), ("server_cpu_us_per_req", 5.0)],
                );
                p.params.insert("conns".into(), 100.into());
                p.params.insert("size".into(), 64.into());
                p
            },
            {
                let mut p = point(
                    "echo",
                    "threads",
                    "conns=100 size=64",
                    &[("req_per_s", 40000.0), ("server_cpu_us_per_req", 9.0)],
                );
                p.params.insert("conns".into(), 100.into());
                p.params.insert("size".into(), 64.into());
                p
            },
        ]);
        let v = echo_view(&r.points);
        assert!(
            v.answer.contains("fastest server was epoll (90k req/s)"),
            "{}",
            v.answer
        );
        assert!(v.answer.contains("slowest threads"), "{}", v.answer);
        assert_eq!(v.rows.len(), 2);
        assert!(v.chart.contains("epoll"));
    }

    /// Every URL in `page` is an XML namespace name (never fetched); every `href`
    /// points inside the page; nothing is loaded by `src=` or CSS `url(...)`.
    fn assert_no_external_reference(page: &str) {
        let rest = page
            .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .replace("xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "");
        for scheme in ["http:", "https:", "file:", "data:", "//"] {
            if let Some(at) = rest.find(scheme) {
                panic!(
                    "external reference: {}",
                    &rest[at..(at + 60).min(rest.len())]
                );
            }
        }
        for (at, _) in rest.match_indices("href=\"") {
            assert!(
                rest[at + 6..].starts_with('#'),
                "link out of the page: {}",
                &rest[at..(at + 60).min(rest.len())]
            );
        }
        assert!(!rest.contains(" src="), "something is loaded by src=");
        assert!(!rest.contains("url("), "something is loaded by url()");
    }

    #[test]
    fn the_external_reference_check_catches_one() {
        let ok = "<svg xmlns=\"http://www.w3.org/2000/svg\"><a href=\"#cpu\">x</a></svg>";
        assert_no_external_reference(ok);
        for bad in [
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><image href=\"http://example.com/a.png\"/></svg>",
            "<svg xmlns=\"http://www.w3.org/2000/svg\">http://example.com</svg>",
            "<img src=\"a.png\">",
            "<div style=\"background: url(a.png)\"></div>",
        ] {
            let caught = std::panic::catch_unwind(|| assert_no_external_reference(bad));
            assert!(caught.is_err(), "not caught: {bad}");
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let mut r = results(vec![point(
            "cpu",
            "rust",
            "mode=threads",
            &[("speedup", 2.0)],
        )]);
        r.notes.push("<script>".into());
        let views = views(&r);
        let page = html(&r, &views);
        assert!(!page.contains("<script"), "no script, nothing fetched");
        assert_no_external_reference(&page);
        for id in EXPERIMENTS {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(markdown(&r, &views).contains("| mode |"));
    }

    #[test]
    fn compare_lines_up_points() {
        let old = results(vec![point(
            "echo",
            "epoll",
            "conns=1 size=64",
            &[("req_per_s", 100.0)],
        )]);
        let new = results(vec![
            point("echo", "epoll", "conns=1 size=64", &[("req_per_s", 150.0)]),
            point("echo", "uring", "conns=1 size=64", &[("req_per_s", 10.0)]),
        ]);
        let text = compare(&old, &new);
        assert!(text.contains("+50.0%"), "{text}");
        assert!(text.contains("new      echo / uring"), "{text}");
        assert!(text.starts_with("1 points in both runs"));
    }
}
