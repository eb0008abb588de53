//! The scaling experiment's view: how far up the ladder each server went, what one
//! connection cost it in user space and the kernel at each rung (as `concur hold`
//! measured it), and what stopped it, in words.

use super::{View, conns_of, join_and, pts, servers_in};
use crate::lab::chart::{self, Scale, Series};
use crate::lab::fmt::{cell, grouped, human, shorten};
use crate::lab::stats::Point;
use std::fmt::Write;

/// A point where every connection opened, answered and stayed open.
fn held(p: &Point) -> bool {
    p.error.is_none()
        && p.skipped.is_none()
        && conns_of(p).is_some_and(|c| p.get("answered_ok") == Some(c))
}

/// Bytes as `388 B`, `10.2 KB`, `1.3 MB`.
fn bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e5 {
        format!("{:.0} KB", b / 1e3)
    } else if b >= 1e3 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

pub fn view(points: &[Point]) -> View {
    let ps = pts(points, "scaling");
    let mut rungs: Vec<u64> = ps
        .iter()
        .filter_map(|p| conns_of(p).map(|c| c as u64))
        .collect();
    rungs.sort_unstable();
    rungs.dedup();
    // Private memory where /proc gave PSS for the whole tree throughout the hold; else
    // RSS, marked so (it counts a page a forked child shares with its parent once per
    // child) and left out of the chart.
    let rss_only = ps.iter().any(|p| p.get("server_rss_b_per_conn").is_some());
    let mut columns = vec!["server".to_string(), "held".into()];
    for r in &rungs {
        columns.push(format!("{}: server B/conn", human(*r as f64)));
    }
    columns.extend(
        [
            "kernel B/conn",
            "its socket buffers B/conn",
            "opened/s",
            "server processes",
            "stopped because",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    let mut user_lines = Vec::new();
    let mut kernel_lines = Vec::new();
    let mut tops: Vec<(String, f64)> = Vec::new();
    let mut stops: Vec<String> = Vec::new();
    let mut forked: Vec<String> = Vec::new();
    for server in servers_in(&ps) {
        let mine: Vec<&Point> = ps.iter().copied().filter(|p| p.server == server).collect();
        let best = mine.iter().copied().filter(|p| held(p)).max_by(|a, b| {
            conns_of(a)
                .unwrap_or(0.0)
                .total_cmp(&conns_of(b).unwrap_or(0.0))
        });
        let top = best.and_then(conns_of).unwrap_or(0.0);
        let mut row = vec![server.clone(), human(top)];
        for r in &rungs {
            let p = mine.iter().find(|p| conns_of(p) == Some(*r as f64));
            row.push(match p {
                Some(p) => match (p.get("server_b_per_conn"), p.get("server_rss_b_per_conn")) {
                    (Some(b), _) => format!("{b:.0}"),
                    (None, Some(b)) => format!("{b:.0} (RSS)"),
                    _ => "-".into(),
                },
                None => "-".into(),
            });
        }
        let at_top = |k: &str| best.and_then(|p| p.get(k));
        row.push(cell(at_top("kernel_b_per_conn")));
        // Only a server with a cgroup of its own has a figure of its own sockets.
        row.push(best.map_or("-".into(), |p| {
            p.get("server_sock_b_per_conn")
                .map_or("not measured".into(), |b| format!("{b:.0}"))
        }));
        row.push(cell(at_top("open_per_sec")));
        row.push(at_top("server_processes").map_or("-".into(), |n| format!("{n:.0}")));
        // What ended the climb: a rung decided beforehand, or one that fell short.
        let why = mine.iter().find_map(|p| {
            let at = conns_of(p).map_or(String::new(), |c| format!("at {}: ", grouped(c as u64)));
            p.skipped
                .as_ref()
                .map(|s| (at.clone(), format!("not started: {s}")))
                .or_else(|| p.error.as_ref().map(|e| (at, e.clone())))
        });
        match &why {
            Some((at, text)) => {
                row.push(format!("{at}{text}"));
                let at = at.trim_end_matches(": ");
                let sep = if at.is_empty() { "" } else { " " };
                stops.push(format!("{server}{sep}{at}: {}", shorten(text, 220)));
            }
            None => row.push(String::new()),
        }
        rows.push(row);
        let line = |key: &str| -> Vec<(f64, f64)> {
            mine.iter()
                .filter(|p| held(p))
                .filter_map(|p| Some((conns_of(p)?, p.get(key)?)))
                .collect()
        };
        // The same servers in both charts, in the same order, so each keeps its colour
        // (a server with no figure for one chart has an empty line there).
        if mine.iter().any(|p| held(p)) {
            for (lines, key) in [
                (&mut user_lines, "server_b_per_conn"),
                (&mut kernel_lines, "kernel_b_per_conn"),
            ] {
                lines.push(Series {
                    name: server.clone(),
                    values: line(key),
                });
            }
        }
        if let Some(w) = mine
            .iter()
            .filter(|p| held(p))
            .filter_map(|p| Some((conns_of(p)?, p.params.get("fork_workers")?.as_u64()?)))
            .next_back()
        {
            forked.push(format!(
                "{server} held {} as {} event-loop processes (--fork)",
                grouped(w.0 as u64),
                w.1
            ));
        }
        tops.push((server, top));
    }
    let mut chart = chart::lines(
        "server user space per held connection (private memory over its process tree)",
        "connections held",
        "bytes per connection",
        Scale::LogXY,
        &user_lines,
    );
    chart.push_str(&chart::lines(
        "kernel memory per held connection (slab and TCP buffers, both loopback ends)",
        "connections held",
        "bytes per connection",
        Scale::LogXY,
        &kernel_lines,
    ));
    let answer = answer(&ps, &tops, &stops, &forked, rss_only);
    View {
        id: "scaling",
        title: "3. Scaling: tens of thousands of connections, and past them",
        question: "Processes and threads are good into the thousands; what if tens of thousands (or more) of concurrent connections need to be serviced?",
        answer,
        columns,
        rows,
        chart,
        failures: Vec::new(),
        notes: if ps.is_empty() {
            Vec::new()
        } else {
            vec![
            "kernel B/conn: the whole machine's slab and TCP memory grown while holding, both loopback ends of each connection. Its socket buffers B/conn: the TCP buffer memory charged to the server's own cgroup, its end only; not measured where the server had no cgroup of its own.".to_string(),
        ]
        },
    }
}

fn answer(
    ps: &[&Point],
    tops: &[(String, f64)],
    stops: &[String],
    forked: &[String],
    rss_only: bool,
) -> String {
    let mut answer = String::new();
    let Some(top) = tops
        .iter()
        .map(|t| t.1)
        .reduce(f64::max)
        .filter(|&t| t > 0.0)
    else {
        if stops.is_empty() {
            return "Not measured.".into();
        }
        return format!(
            "No server held a rung. What stopped each: {}.",
            stops.join("; ")
        );
    };
    let highest: Vec<&str> = tops
        .iter()
        .filter(|t| t.1 >= top)
        .map(|t| t.0.as_str())
        .collect();
    let _ = write!(
        answer,
        "{} held {} connections at once and answered each. ",
        join_and(&highest),
        grouped(top as u64)
    );
    if !forked.is_empty() {
        let _ = write!(
            answer,
            "Past one process's descriptors: {}. ",
            forked.join("; ")
        );
    }
    // The lightest at the highest rung reached, user space against the kernel.
    let at_top: Vec<&&Point> = ps
        .iter()
        .filter(|p| held(p) && conns_of(p) == Some(top))
        .collect();
    if let Some(p) = at_top
        .iter()
        .filter(|p| p.get("server_b_per_conn").is_some())
        .min_by(|a, b| {
            a.get("server_b_per_conn")
                .unwrap_or(0.0)
                .total_cmp(&b.get("server_b_per_conn").unwrap_or(0.0))
        })
    {
        let user = p.get("server_b_per_conn").unwrap_or(0.0);
        let _ = write!(
            answer,
            "At {} the lightest server was {}: {} of user space per connection (private \
             memory over its process tree)",
            grouped(top as u64),
            p.server,
            bytes(user),
        );
        match p.get("kernel_b_per_conn") {
            Some(k) if k > user => {
                let _ = write!(
                    answer,
                    ", against {} in the kernel for the connection's two loopback sockets: \
                     the kernel, not the server, holds most of what a connection costs. ",
                    bytes(k)
                );
            }
            Some(k) => {
                let _ = write!(answer, ", and {} in the kernel. ", bytes(k));
            }
            None => answer.push_str(". "),
        }
    }
    if rss_only {
        answer.push_str(
            "Figures marked RSS are holds where /proc could not give PSS for the whole process \
             tree at every reading (a process read as it was born or gone): RSS counts a forked \
             child's shared pages once per child, so they overstate a forking server. ",
        );
    }
    if !stops.is_empty() {
        let _ = write!(answer, "What stopped each: {}. ", stops.join("; "));
    }
    // Ports: the hold spreads over source addresses, so they never bound here.
    if let Some((n, sources)) = ps
        .iter()
        .filter(|p| held(p))
        .filter_map(|p| Some((conns_of(p)?, p.get("source_addrs")?)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
    {
        let _ = write!(
            answer,
            "Ports did not bind: the {} connections came from {} source address{} in 127.0.0.0/8.",
            grouped(n as u64),
            sources as u64,
            if sources as u64 == 1 { "" } else { "es" }
        );
    }
    answer.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::views::testing::point;

    fn rung(server: &str, n: u32, metrics: &[(&str, f64)]) -> Point {
        let mut p = point("scaling", server, &format!("conns={n}"), metrics);
        p.params.insert("conns".into(), n.into());
        p
    }

    fn held_at(server: &str, n: u32, user: f64, kernel: f64) -> Point {
        let n64 = f64::from(n);
        rung(
            server,
            n,
            &[
                ("opened", n64),
                ("answered_ok", n64),
                ("server_b_per_conn", user),
                ("kernel_b_per_conn", kernel),
                ("server_pss_mb", 40.0),
                ("source_addrs", (n64 / 9881.0).ceil()),
                ("open_per_sec", 20_000.0),
                ("server_processes", 1.0),
            ],
        )
    }

    #[test]
    fn the_climb_the_costs_and_what_stopped_each_are_said_in_words() {
        let mut forked = held_at("reuseport", 100_000, 388.0, 10_245.0);
        forked.params.insert("fork_workers".into(), 6.into());
        let mut skipped_select = rung("select", 10_000, &[]);
        skipped_select.skipped =
            Some("select(2) watches only descriptors below FD_SETSIZE (1024)".into());
        let mut skipped_blocking = rung("blocking", 1_000, &[]);
        skipped_blocking.skipped = Some("it serves one client at a time".into());
        let mut short = rung(
            "python-processes",
            10_000,
            &[("opened", 10_000.0), ("answered_ok", 4_898.0)],
        );
        short.error = Some("opened 10000 and answered 4898 of 10000".into());
        let points = vec![
            skipped_blocking,
            held_at("select", 1_000, 300.0, 10_000.0),
            skipped_select,
            held_at("reuseport", 1_000, 600.0, 10_300.0),
            held_at("reuseport", 10_000, 420.0, 10_200.0),
            forked,
            held_at("python-processes", 1_000, 150_000.0, 12_000.0),
            short,
        ];
        let v = view(&points);
        let a = &v.answer;
        assert!(
            a.starts_with("reuseport held 100,000 connections at once and answered each."),
            "{a}"
        );
        assert!(
            a.contains("reuseport held 100,000 as 6 event-loop processes (--fork)"),
            "{a}"
        );
        assert!(
            a.contains("the lightest server was reuseport: 388 B"),
            "{a}"
        );
        assert!(a.contains("against 10.2 KB in the kernel"), "{a}");
        assert!(
            a.contains("select at 10,000: not started: select(2) watches only"),
            "{a}"
        );
        assert!(
            a.contains("blocking at 1,000: not started: it serves one"),
            "{a}"
        );
        assert!(
            a.contains("python-processes at 10,000: opened 10000 and answered 4898"),
            "{a}"
        );
        assert!(a.contains("from 11 source addresses"), "{a}");
        // One row per server, a memory column per rung, the reason in the last column.
        assert_eq!(v.rows.len(), 4);
        let reuseport = v.rows.iter().find(|r| r[0] == "reuseport").unwrap();
        assert_eq!(reuseport[1], "100k");
        assert_eq!(&reuseport[2..5], ["600", "420", "388"]);
        assert_eq!(reuseport.last().unwrap(), "");
        let blocking = v.rows.iter().find(|r| r[0] == "blocking").unwrap();
        assert_eq!(blocking[1], "0");
        assert!(
            blocking
                .last()
                .unwrap()
                .starts_with("at 1,000: not started")
        );
        assert_eq!(v.columns[2], "1.0k: server B/conn");
        assert!(!a.contains("marked RSS"), "{a}");
        // Both charts drawn, with the servers that held something.
        assert_eq!(v.chart.matches("<svg").count(), 2);
        assert!(v.chart.contains("python-processes") && v.chart.contains("reuseport"));
    }

    #[test]
    fn an_rss_figure_is_marked_and_kept_out_of_the_chart() {
        let mut p = held_at("processes", 10_000, 0.0, 30_000.0);
        p.metrics.remove("server_b_per_conn");
        p.metrics.remove("server_pss_mb");
        p.set_runs(&[[("server_rss_b_per_conn".to_string(), 11_000_000.0)].into()]);
        let v = view(&[held_at("processes", 1_000, 85_000.0, 30_000.0), p]);
        assert_eq!(v.rows[0][2..4], ["85000", "11000000 (RSS)"]);
        assert!(v.answer.contains("Figures marked RSS"), "{}", v.answer);
        assert!(!v.chart.contains("11.0M"), "the RSS figure is not drawn");
    }

    #[test]
    fn nothing_held_says_why() {
        let mut p = rung("blocking", 200, &[]);
        p.skipped = Some("it serves one client at a time".into());
        let v = view(&[p]);
        assert!(
            v.answer.starts_with("No server held a rung"),
            "{}",
            v.answer
        );
        assert_eq!(view(&[]).answer, "Not measured.");
    }
}
