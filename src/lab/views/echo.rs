//! The echo experiment's view.

use super::{View, conns_of, failures, find, pts, servers_in};
use super::{ceiling_of, family_of, join_and, leaders, spread_cell};
use crate::account::How;
use crate::lab::chart::{self, Series};
use crate::lab::fmt::{cell, human};
use crate::lab::results::ServerInfo;
use crate::lab::servers::Family;
use crate::lab::stats::Point;
use crate::lab::stats::Stat;
use std::fmt::Write;

pub fn view(points: &[Point], servers: &[ServerInfo]) -> View {
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
    let pss = ps.iter().any(|p| p.get("server_pss_mb").is_some());
    let (mem_key, mem_label) = if pss {
        ("server_pss_mb", "memory MB (PSS)")
    } else {
        ("server_rss_mb", "memory MB (RSS)")
    };
    let mut columns: Vec<String> = vec!["server".into()];
    columns.extend(conns.iter().map(|c| format!("req/s @{c}")));
    columns.push(format!("req/s 4KiB @{big_conns}"));
    columns.extend(
        [
            "p50 µs",
            "p99 µs",
            "CPU µs/req",
            mem_label,
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
    let mut series: Vec<Series<Vec<(f64, f64)>>> = Vec::new();
    let mut families: Vec<Family> = servers_in(&ps)
        .iter()
        .map(|s| family_of(s, servers))
        .collect();
    families.sort();
    families.dedup();
    let families = &families;
    for server in servers_in(&ps) {
        let mut row = vec![server.clone()];
        let mut line = Vec::new();
        for c in &conns {
            let s = find(&ps, &server, &format!("conns={c} size=64"))
                .and_then(|p| p.metrics.get("req_per_s"));
            if let Some(s) = s {
                line.push((*c as f64, s.median));
            }
            row.push(spread_cell(s));
        }
        row.push(spread_cell(
            big.as_ref()
                .and_then(|b| find(&ps, &server, b))
                .and_then(|p| p.metrics.get("req_per_s")),
        ));
        let m = find(&ps, &server, &mid_case);
        let g = |k: &str| m.and_then(|p| p.get(k));
        // A figure the run could not measure says so; "-" is a point not run.
        let server_cell =
            |k: &str, show: &dyn Fn(f64) -> String| match (g(k), m.and_then(|p| p.how(k))) {
                (Some(x), _) => show(x),
                (None, Some(_)) => "not measured".to_string(),
                (None, None) => "-".to_string(),
            };
        row.extend([
            cell(g("p50_us")),
            cell(g("p99_us")),
            server_cell("server_cpu_us_per_req", &|x| format!("{x:.1}")),
            server_cell(mem_key, &|x| cell(Some(x))),
            server_cell("server_threads", &|x| cell(Some(x))),
            server_cell("ctx_switches_per_req", &|x| format!("{x:.2}")),
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
    // One small chart per family (the talk's models, further models, CPython, yours):
    // a handful of lines each, labelled where they end, instead of fifteen colours.
    let mut chart = String::new();
    for family in families {
        let mine: Vec<Series<Vec<(f64, f64)>>> = series
            .iter()
            .filter(|s| family_of(&s.name, servers) == *family)
            .map(|s| Series {
                name: s.name.clone(),
                values: s.values.clone(),
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let title = format!("echo, 64-byte requests: {}", family.label());
        chart.push_str(&if conns.len() > 1 {
            chart::lines(
                &title,
                "concurrent connections",
                "requests/s",
                chart::Scale::LogX,
                &mine,
            )
        } else {
            // One connection count: a line would be a column of dots; bars read better.
            let names: Vec<String> = mine.iter().map(|s| s.name.clone()).collect();
            let values = mine.iter().map(|s| s.values.first().map(|p| p.1)).collect();
            chart::bars(
                &format!("{title}, {mid} connections"),
                "requests/s",
                &names,
                &[Series {
                    name: "req/s".into(),
                    values,
                }],
            )
        });
    }
    let at = |server: &str, c: u64, k: &str| {
        find(&ps, server, &format!("conns={c} size=64")).and_then(|p| p.get(k))
    };
    let mut answer = String::new();
    let stat_at =
        |server: &str| find(&ps, server, &mid_case).and_then(|p| p.metrics.get("req_per_s"));
    let mut ranked: Vec<(String, &Stat)> = servers_in(&ps)
        .into_iter()
        .filter_map(|s| stat_at(&s).map(|st| (s, st)))
        .collect();
    ranked.sort_by(|a, b| b.1.median.total_cmp(&a.1.median));
    if let (Some(best), Some(worst)) = (ranked.first(), ranked.last()) {
        let by_name: Vec<(&str, &Stat)> = ranked.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let tied = leaders(&by_name, true);
        if tied.len() > 1 {
            let _ = write!(
                answer,
                "At {mid} connections {} tie for fastest (around {} req/s): their repeats overlap, so this run cannot rank them. The slowest was {} ({} req/s). ",
                join_and(&tied),
                human(best.1.median),
                worst.0,
                human(worst.1.median)
            );
        } else {
            let _ = write!(
                answer,
                "At {mid} connections the fastest server was {} ({} req/s) and the slowest {} ({} req/s). ",
                best.0,
                human(best.1.median),
                worst.0,
                human(worst.1.median)
            );
        }
    }
    // The talk's first contrast, found by the registry's facts: the concur model that
    // serves one client at a time against the one that starts a thread per client.
    let model_with = |ceiling: &str| {
        servers_in(&ps).into_iter().find(|s| {
            matches!(family_of(s, servers), Family::Talk | Family::Further)
                && ceiling_of(s, servers).as_deref() == Some(ceiling)
        })
    };
    if let (Some(one), Some(threads)) = (model_with("one"), model_with("threads"))
        && let (Some(b), Some(t)) = (at(&one, mid, "req_per_s"), at(&threads, mid, "req_per_s"))
    {
        let alone = conns
            .first()
            .filter(|&&c| c < mid)
            .and_then(|&c| at(&one, c, "req_per_s").map(|r| (c, r)))
            .map(|(c, r)| {
                format!(
                    " (with {c} connection{}: {})",
                    if c == 1 { "" } else { "s" },
                    human(r)
                )
            })
            .unwrap_or_default();
        let errs = at(&one, mid, "errors").unwrap_or(0.0);
        let timeouts = if errs > 0.0 {
            format!(", and {} requests failed or timed out", human(errs))
        } else {
            String::new()
        };
        let _ = write!(
            answer,
            "{one} serves one client at a time while the rest wait in the listen backlog: at {mid} connections it managed {} req/s{alone} against {} for {threads}, a thread per client{timeouts}. ",
            human(b),
            human(t),
        );
    }
    // The cheapest is named only on figures exact for every server at that point
    // (each counted by the server's own cgroup): a sampled figure can miss what an
    // exited thread or child did last, and those are the servers the talk contrasts.
    let costs: Vec<(String, f64, Option<String>)> = servers_in(&ps)
        .into_iter()
        .filter_map(|s| {
            let p = find(&ps, &s, &mid_case)?;
            let how = p.how("server_cpu_us_per_req").map(String::from);
            Some((s, p.get("server_cpu_us_per_req")?, how))
        })
        .collect();
    let inexact: Vec<&str> = costs
        .iter()
        .filter(|(_, _, how)| how.as_deref() != Some(How::Cgroup.label()))
        .map(|(s, _, _)| s.as_str())
        .collect();
    if let Some((s, c, _)) = costs.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        if inexact.is_empty() {
            let _ = write!(
                answer,
                "The cheapest in CPU was {s} at {c:.1} µs of server CPU per request (each server's own cgroup, every thread and child it ran counted). "
            );
        } else {
            let _ = write!(
                answer,
                "No server is named cheapest in CPU: the CPU of {} was sampled from /proc, not counted by a cgroup, so the figures are not exact for every server. ",
                join_and(&inexact)
            );
        }
    }
    // Each CPython server against the concur model written the same way.
    let pairs: Vec<String> = servers
        .iter()
        .filter_map(|s| {
            let rust = s.counterpart.as_deref()?;
            let (py, rs) = (at(&s.name, mid, "req_per_s")?, at(rust, mid, "req_per_s")?);
            Some(format!(
                "{} {:.0}% of {rust}",
                s.name,
                100.0 * py / rs.max(1e-9)
            ))
        })
        .collect();
    if !pairs.is_empty() {
        let _ = write!(
            answer,
            "The talk's servers in CPython reached, of the throughput of the Rust model written the same way: {}.",
            join_and(&pairs.iter().map(String::as_str).collect::<Vec<_>>())
        );
    }
    if answer.is_empty() {
        answer = "Not measured.".into();
    }
    let notes = notes_on(&ps, &mid_case, servers);
    View {
        id: "echo",
        title: "2. I/O-bound: the echo server under every model",
        question: "The talk's echo server written blocking, thread per client, process per client, with select and with asyncio: what does each cost and how far does each go?",
        answer,
        columns,
        rows,
        chart,
        failures: failures(&ps),
        notes,
    }
}

/// How the server figures of the table were measured, and what its errors were, in
/// words: a table of numbers says neither.
fn notes_on(ps: &[&Point], mid_case: &str, servers: &[ServerInfo]) -> Vec<String> {
    let mut notes = Vec::new();
    let at_mid: Vec<&Point> = ps.iter().copied().filter(|p| p.case == mid_case).collect();
    let by = |metric: &str, how: &str| -> Vec<&str> {
        at_mid
            .iter()
            .filter(|p| p.how(metric) == Some(how))
            .map(|p| p.server.as_str())
            .collect()
    };
    let cgroup = by("server_cpu_us_per_req", How::Cgroup.label());
    let sampled = by("server_cpu_us_per_req", How::Sampled.label());
    let mut cpu = Vec::new();
    if !cgroup.is_empty() {
        cpu.push(format!(
            "counted by the server's own cgroup, every thread and child it ever ran included, for {}",
            group_of(&cgroup)
        ));
    }
    if !sampled.is_empty() {
        cpu.push(format!(
            "sampled from /proc while the load ran (a thread or child's last moments before it exited may be missed) for {}",
            group_of(&sampled)
        ));
    }
    if !cpu.is_empty() {
        notes.push(format!("Server CPU: {}.", cpu.join("; ")));
    }
    if at_mid
        .iter()
        .any(|p| p.how("ctx_switches_per_req").is_some())
    {
        notes.push(
            "Threads and context switches: sampled from /proc while the load ran, every thread and child ever seen kept with its last counts, the last reading taken before the clients closed."
                .into(),
        );
    }
    // Errors in words: a bounded server's timeouts are its nature, not a fault.
    for p in ps
        .iter()
        .filter(|p| p.get("errors").is_some_and(|e| e > 0.0))
    {
        let timeouts = p.get("errors_timeout").unwrap_or(0.0);
        let conns = conns_of(p).unwrap_or(0.0);
        let why = match ceiling_of(&p.server, servers).as_deref() {
            Some("one") if timeouts > 0.0 => {
                " it serves one client at a time, and the others waited past the load's timeout"
            }
            Some("workers") if timeouts > 0.0 => {
                " it serves as many clients at once as it has workers, and the others waited past the load's timeout for one to be free (the pool's nature, not a fault)"
            }
            _ => "",
        };
        let kinds: Vec<String> = [
            ("timed out", timeouts),
            ("refused", p.get("errors_refused").unwrap_or(0.0)),
            ("closed early", p.get("errors_closed_early").unwrap_or(0.0)),
        ]
        .iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(what, n)| format!("{} {what}", human(*n)))
        .collect();
        let kinds = if kinds.is_empty() {
            format!("{} failed", human(p.get("errors").unwrap_or(0.0)))
        } else {
            kinds.join(", ")
        };
        notes.push(format!(
            "Errors of {} at {conns} connections: {kinds} of its clients{}.",
            p.server,
            if why.is_empty() {
                String::new()
            } else {
                format!(":{why}")
            }
        ));
    }
    notes
}

/// "all 5 servers" or the names.
fn group_of(names: &[&str]) -> String {
    if names.len() > 4 {
        format!("{} servers ({})", names.len(), names.join(", "))
    } else {
        join_and(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::views::testing::{point, results};

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
        let v = view(&r.points, &[]);
        assert!(
            v.answer.contains("fastest server was epoll (90k req/s)"),
            "{}",
            v.answer
        );
        assert!(v.answer.contains("slowest threads"), "{}", v.answer);
        assert_eq!(v.rows.len(), 2);
        assert!(v.chart.contains("epoll"));
    }

    #[test]
    fn talk_sentences_come_from_facts_not_names() {
        let mk = |server: &str, conns: u32, req: f64, cpu: f64| {
            let mut p = point(
                "echo",
                server,
                &format!("conns={conns} size=64"),
                &[
                    ("req_per_s", req),
                    ("server_cpu_secs", cpu),
                    ("server_cpu_us_per_req", cpu * 1e6 / req),
                ],
            );
            p.params.insert("conns".into(), conns.into());
            p.params.insert("size".into(), 64.into());
            p
        };
        let info =
            |name: &str, family: Family, ceiling: &str, counterpart: Option<&str>| ServerInfo {
                name: name.into(),
                family,
                ceiling: Some(ceiling.into()),
                counterpart: counterpart.map(String::from),
            };
        // A one-at-a-time model and a thread-per-client one under names the view has
        // never heard of: it finds them by their ceilings.
        let servers = [
            info("serial", Family::Talk, "one", None),
            info("per-thread", Family::Talk, "threads", None),
            info("loop", Family::Further, "descriptors", None),
            info("py-loop", Family::Python, "descriptors", Some("loop")),
            info("py-serial", Family::Python, "one", Some("serial")),
        ];
        let mut r = results(vec![
            mk("serial", 1, 10_000.0, 0.1),
            mk("serial", 100, 11_000.0, 0.1),
            mk("per-thread", 100, 125_000.0, 1.0),
            mk("loop", 100, 200_000.0, 0.01),
            mk("py-loop", 100, 20_000.0, 0.5),
            mk("py-serial", 100, 5_500.0, 0.2),
        ]);
        for p in &mut r.points {
            p.measured
                .insert("server_cpu_us_per_req".into(), "cgroup".into());
        }
        let a = view(&r.points, &servers).answer;
        assert!(
            a.contains("serial serves one client at a time while the rest wait in the listen backlog: at 100 connections it managed 11k req/s (with 1 connection: 10k) against 125k for per-thread, a thread per client"),
            "{a}"
        );
        assert!(
            a.contains("of the throughput of the Rust model written the same way: py-loop 10% of loop and py-serial 50% of serial."),
            "{a}"
        );
        // Every server's CPU counted by its cgroup: the cheapest is named.
        assert!(a.contains("The cheapest in CPU was loop at 0.1"), "{a}");
        // One server's sampled: no winner on figures not exact for every server.
        r.points[2]
            .measured
            .insert("server_cpu_us_per_req".into(), "sampled".into());
        let a = view(&r.points, &servers).answer;
        assert!(!a.contains("cheapest in CPU was"), "{a}");
        assert!(
            a.contains("No server is named cheapest in CPU: the CPU of per-thread was sampled"),
            "{a}"
        );
    }

    /// A figure the run could not measure is "not measured" in the table, never 0,
    /// and the notes say how the others were measured and what the errors were.
    #[test]
    fn unmeasured_figures_say_so_and_errors_are_explained() {
        let mut pool = point(
            "echo",
            "pool",
            "conns=100 size=64",
            &[
                ("req_per_s", 9_000.0),
                ("server_cpu_us_per_req", 7.5),
                ("errors", 480.0),
                ("errors_timeout", 480.0),
            ],
        );
        pool.params.insert("conns".into(), 100.into());
        pool.params.insert("size".into(), 64.into());
        pool.measured = [
            ("server_cpu_us_per_req".to_string(), "cgroup".to_string()),
            ("ctx_switches_per_req".to_string(), "sampled".to_string()),
            ("server_pss_mb".to_string(), "not measured".to_string()),
            ("server_threads".to_string(), "not measured".to_string()),
        ]
        .into();
        let servers = [ServerInfo {
            name: "pool".into(),
            family: Family::Further,
            ceiling: Some("workers".into()),
            counterpart: None,
        }];
        let v = view(&[pool], &servers);
        let row = &v.rows[0];
        let col = |name: &str| {
            v.columns
                .iter()
                .position(|c| c.starts_with(name))
                .unwrap_or_else(|| panic!("no column {name}: {:?}", v.columns))
        };
        assert_eq!(row[col("threads")], "not measured", "{row:?}");
        assert_eq!(row[col("CPU µs/req")], "7.5", "{row:?}");
        assert_eq!(row[col("ctx sw/req")], "not measured", "{row:?}");
        let notes = v.notes.join("\n");
        assert!(
            notes.contains("Server CPU: counted by the server's own cgroup"),
            "{notes}"
        );
        assert!(
            notes.contains("Errors of pool at 100 connections: 480 timed out of its clients: it serves as many clients at once as it has workers"),
            "{notes}"
        );
    }

    #[test]
    fn servers_whose_repeats_overlap_tie() {
        let mk = |server: &str, runs: &[f64]| {
            let mut p = crate::lab::stats::Point::new("echo", server, "conns=100 size=64");
            let runs: Vec<std::collections::BTreeMap<String, f64>> = runs
                .iter()
                .map(|&x| [("req_per_s".to_string(), x)].into())
                .collect();
            p.set_runs(&runs);
            p.params.insert("conns".into(), 100.into());
            p.params.insert("size".into(), 64.into());
            p
        };
        let r = results(vec![
            mk("select", &[90_000.0, 100_000.0, 95_000.0]),
            mk("uring", &[92_000.0, 99_000.0, 97_000.0]),
            mk("threads", &[40_000.0, 41_000.0, 42_000.0]),
        ]);
        let v = view(&r.points, &[]);
        assert!(
            v.answer.contains("uring and select tie for fastest"),
            "{}",
            v.answer
        );
        assert!(v.answer.contains("slowest was threads"), "{}", v.answer);
        assert!(v.rows[0][1].contains("(90k–100k)"), "{:?}", v.rows[0]);
        let r = results(vec![
            mk("select", &[90_000.0, 100_000.0]),
            mk("threads", &[40_000.0, 41_000.0]),
        ]);
        assert!(
            view(&r.points, &[])
                .answer
                .contains("fastest server was select")
        );
    }
}
