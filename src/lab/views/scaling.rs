//! The scaling experiment's view.

use super::{View, conns_of, pts, servers_in};
use crate::lab::chart::{self, Series};
use crate::lab::fmt::{cell, human, shorten};
use crate::lab::stats::Point;
use std::fmt::Write;

pub fn view(points: &[Point]) -> View {
    let ps = pts(points, "scaling");
    let mut rungs: Vec<u64> = ps
        .iter()
        .filter_map(|p| conns_of(p).map(|c| c as u64))
        .collect();
    rungs.sort_unstable();
    rungs.dedup();
    // PSS where the kernel gives it: RSS counts pages a forked child shares with its
    // parent once per child, so a forking server would look a process per connection.
    let pss = ps.iter().any(|p| p.get("pss_kb_per_conn").is_some());
    let (mem_key, measure) = if pss {
        ("pss_kb_per_conn", "PSS")
    } else {
        ("rss_kb_per_conn", "RSS")
    };
    let mut columns = vec!["server".to_string(), "held".into()];
    for r in &rungs {
        columns.push(format!("{r}: open s"));
        columns.push(format!("{r}: KB/conn ({measure})"));
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
                p.and_then(|p| p.get(mem_key))
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
            .filter_map(|p| p.get(mem_key).map(|k| (p.server.clone(), k)))
            .collect();
        lightest.sort_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((s, k)) = lightest.first() {
            let _ = write!(
                answer,
                "The lightest was {s} at {k:.1} KB of server memory per connection ({}). ",
                if pss {
                    "PSS over its process tree: pages shared by several processes counted once"
                } else {
                    "RSS over its process tree"
                }
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
