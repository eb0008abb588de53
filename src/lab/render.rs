//! Rendering: the views laid out as `report.html` (self-contained: inline SVG, no
//! script, nothing fetched) and `summary.md`, and `--compare`'s point-by-point text.

use super::fmt::{escape, human};
use super::results::Results;
use super::stats::Point;
use super::views::View;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Which machine and software produced the report, as label and text.
pub fn header(results: &Results) -> Vec<(String, String)> {
    let m = &results.machine;
    let mut h = vec![
        (
            "machine".to_string(),
            format!(
                "{}: {} cores ({}), {:.1} GiB",
                if m.hostname.is_empty() {
                    "unknown"
                } else {
                    &m.hostname
                },
                m.cores,
                m.cpu_model,
                m.memory_gib
            ),
        ),
        ("kernel".to_string(), format!("Linux {}", m.kernel)),
        ("concur".to_string(), results.concur_version.clone()),
        (
            "CPython".to_string(),
            m.python.clone().unwrap_or_else(|| {
                "python3 not found (or not asked for), so no CPython references".into()
            }),
        ),
    ];
    if results.started_unix > 0 {
        h.push(("started".to_string(), utc(results.started_unix)));
    }
    if !results.experiment_secs.is_empty() {
        let total: f64 = results.experiment_secs.values().sum();
        let each: Vec<String> = super::results::EXPERIMENTS
            .iter()
            .filter_map(|e| {
                let t = results.experiment_secs.get(*e)?;
                Some(format!("{e} {}", duration(*t)))
            })
            .collect();
        h.push((
            "run time".to_string(),
            format!("{} ({})", duration(total), each.join(", ")),
        ));
    }
    if let Some(l) = &results.scaling_limits {
        let mem = l.mem_available_bytes.map_or(String::new(), |b| {
            format!(
                ", {:.1} GB of memory available when scaling began",
                b as f64 / 1e9
            )
        });
        h.push((
            "limits".to_string(),
            format!(
                "{} descriptors per process, a thread ceiling of {}, {} process ids{mem}",
                super::fmt::grouped(l.fd_limit),
                super::fmt::grouped(l.thread_ceiling),
                super::fmt::grouped(l.process_ceiling)
            ),
        ));
    }
    h
}

/// A table cell that holds a number (`45k`, `0.15`, `-`, `45k (44k–47k)`, `12 (RSS)`).
fn numeric(cell: &str) -> bool {
    cell.starts_with(|c: char| c.is_ascii_digit()) || cell == "-" || cell.is_empty()
}

/// Seconds as `48 s` or `3 min 12 s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// Unix seconds as `2026-11-27 01:24 UTC` (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hh, mm) = (secs % 86_400 / 3600, secs % 3600 / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

/// The run's parameters as a short list a person reads (results.json keeps the JSON).
pub fn params_list(p: &serde_json::Value) -> Vec<(String, String)> {
    let num = |k: &str| p.get(k).and_then(|v| v.as_u64());
    let list = |k: &str| -> Vec<u64> {
        p.get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default()
    };
    let names = |k: &str| -> Vec<String> {
        p.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let fib_list = |ns: Vec<u64>| match ns.first() {
        Some(&n) if ns.iter().all(|&x| x == n) => format!("fib({n})x{}", ns.len()),
        _ => ns
            .iter()
            .map(|n| format!("fib({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut out = Vec::new();
    if p.get("quick").and_then(|v| v.as_bool()) == Some(true) {
        out.push(("size".into(), "--quick: a small matrix".into()));
    }
    out.push(("experiments".into(), names("experiments").join(", ")));
    let models = names("models");
    out.push((
        "concur models".into(),
        if models.is_empty() {
            "none".into()
        } else {
            models.join(", ")
        },
    ));
    if let Some(users) = p.get("user_servers").and_then(|v| v.as_array())
        && !users.is_empty()
    {
        let list: Vec<&str> = users
            .iter()
            .filter_map(|u| u.get("name").and_then(|n| n.as_str()))
            .collect();
        out.push(("your servers".into(), list.join(", ")));
    }
    if let Some(r) = num("repeat") {
        out.push(("repeats per point".into(), r.to_string()));
    }
    if let (Some(d), Some(t)) = (num("duration"), num("timeout")) {
        out.push((
            "each load run".into(),
            format!("{d} ms, a reply later than {t} ms is a timeout"),
        ));
    }
    let echo = list("echo_conns");
    if !echo.is_empty() {
        out.push((
            "echo".into(),
            format!(
                "64-byte requests at {} connections; 4 KiB at {}",
                echo.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                num("big_conns").unwrap_or(0)
            ),
        ));
    }
    let hold = list("hold_conns");
    if !hold.is_empty() {
        out.push((
            "scaling".into(),
            format!(
                "a ladder of {} connections held {} ms each, every server as far as it can",
                hold.iter()
                    .map(|&n| super::fmt::grouped(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                num("hold_duration").unwrap_or(0)
            ),
        ));
    }
    out.push((
        "cpu".into(),
        format!(
            "{} in Rust, {} in CPython",
            fib_list(list("fib_rust_n")),
            fib_list(list("fib_python_n"))
        ),
    ));
    if let (Some(h), Some(hp)) = (num("heavy"), num("heavy_python")) {
        out.push((
            "fibload".into(),
            format!("fib(1) clients beside one asking fib({h}) (Rust servers) or fib({hp}) (CPython and yours, unless set)"),
        ));
    }
    out
}

/// The self-contained HTML report.
pub fn html(results: &Results, views: &[View]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>concur lab report</title>\n<style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0;font-size:0.9em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
td:first-child,th:first-child,td.text{{text-align:left}}th{{background:#f3f3f3}}\
blockquote{{color:#555;border-left:4px solid #ddd;margin:0;padding-left:1em}}.answer{{background:#eef6ee;padding:0.6em 1em}}.note{{color:#444;font-size:0.9em;margin:0.3em 0}}\
.warn{{background:#fff3e0;padding:0.6em 1em}}code{{word-break:break-all}}\
pre{{white-space:pre-wrap;word-break:break-all;font-size:0.8em;background:#f7f7f7;padding:0.5em}}.facts{{list-style:none;padding:0}}</style></head><body>\n<h1>concur lab report</h1>\n"
    );
    s.push_str("<ul class=\"facts\">");
    for (k, v) in header(results) {
        let _ = write!(s, "<li><b>{}:</b> {}</li>", escape(&k), escape(&v));
    }
    s.push_str("</ul>\n");
    if results.pinned {
        s.push_str("<p>Each server ran pinned to core 0 and its load to core 1.</p>\n");
    } else {
        s.push_str("<p class=\"warn\">This machine has one core: servers and load shared it, so the load competes with the server it measures.</p>\n");
    }
    if results.interrupted {
        s.push_str("<p class=\"warn\">The run was interrupted: this report holds what was measured before.</p>\n");
    }
    s.push_str("<details open><summary>Parameters</summary><ul>");
    for (k, v) in params_list(&results.params) {
        let _ = write!(s, "<li>{}: {}</li>", escape(&k), escape(&v));
    }
    s.push_str("</ul><p>results.json keeps them exactly.</p></details>\n");
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
                // Numbers align right, words (a reason, a name) read from the left.
                if numeric(c) {
                    let _ = write!(s, "<td>{}</td>", escape(c));
                } else {
                    let _ = write!(s, "<td class=\"text\">{}</td>", escape(c));
                }
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        for n in &v.notes {
            let _ = writeln!(s, "<p class=\"note\">{}</p>", escape(n));
        }
        if let Some(cmds) = results.commands.get(v.id) {
            let _ = writeln!(
                s,
                "<details><summary>the exact commands ({})</summary><pre>{}</pre></details>",
                cmds.len(),
                escape(&cmds.join("\n"))
            );
        }
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
    for (k, v) in header(results) {
        let _ = writeln!(s, "- **{k}:** {v}");
    }
    s.push_str("\nParameters:\n\n");
    for (k, v) in params_list(&results.params) {
        let _ = writeln!(s, "- {k}: {v}");
    }
    s.push('\n');
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
        for n in &v.notes {
            let _ = writeln!(s, "{n}\n");
        }
        if let Some(cmds) = results.commands.get(v.id) {
            let _ = writeln!(s, "Commands:\n\n```sh\n{}\n```\n", cmds.join("\n"));
        }
    }
    s
}

/// What changed between two runs, point by point, for the headline metrics.
pub fn compare(old: &Results, new: &Results) -> String {
    const METRICS: [&str; 9] = [
        "req_per_s",
        "p99_us",
        "server_cpu_us_per_req",
        "speedup",
        "wall_secs",
        "server_b_per_conn",
        "kernel_b_per_conn",
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
    use crate::lab::views::testing::{point, results};

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
        let views = crate::lab::views::views(&r);
        let page = html(&r, &views);
        assert!(!page.contains("<script"), "no script, nothing fetched");
        assert_no_external_reference(&page);
        for id in crate::lab::results::EXPERIMENTS {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(markdown(&r, &views).contains("| mode |"));
    }

    #[test]
    fn header_names_machine_kernel_cpu_version_and_commands() {
        let mut r = results(vec![point(
            "echo",
            "epoll",
            "conns=10 size=64",
            &[("req_per_s", 2.0)],
        )]);
        r.started_unix = 1_700_000_000;
        r.commands.insert(
            "echo".into(),
            vec!["concur load --addr 127.0.0.1:{port} --prefix 'Received: '".into()],
        );
        r.params = serde_json::json!({"repeat": 3, "experiments": ["echo"], "models": [],
            "fib_rust_n": [40, 40, 40, 40], "fib_python_n": [30, 30, 30, 30],
            "echo_conns": [1, 10], "big_conns": 100, "duration": 1000, "timeout": 2000,
            "hold_conns": [1000, 10000, 100000], "hold_duration": 1000});
        r.experiment_secs = [("echo".to_string(), 95.4), ("cpu".to_string(), 30.0)].into();
        r.scaling_limits = Some(crate::lab::results::ScalingLimits {
            fd_limit: 20_000,
            thread_ceiling: 13_106,
            process_ceiling: 32_768,
            mem_available_bytes: Some(23_800_000_000),
        });
        let views = crate::lab::views::views(&r);
        let page = html(&r, &views);
        for needle in [
            "kernel:",
            "concur:",
            &r.machine.cpu_model,
            "2023-11-14 22:13 UTC",
            "repeats per point: 3",
            "fib(40)x4 in Rust, fib(30)x4 in CPython",
            "64-byte requests at 1, 10 connections",
            "a ladder of 1,000, 10,000, 100,000 connections held 1000 ms each",
            "2 min 5 s (cpu 30 s, echo 1 min 35 s)",
            "20,000 descriptors per process, a thread ceiling of 13,106, 32,768 process ids, 23.8 GB",
            "--addr 127.0.0.1:{port} --prefix &#39;Received: &#39;",
        ] {
            let needle = needle.replace("&#39;", "'");
            assert!(page.contains(&needle), "{needle} missing");
        }
        assert!(!page.contains("\"fib_rust_n\""), "no raw JSON");
        let md = markdown(&r, &views);
        assert!(md.contains("```sh\nconcur load"), "{md}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
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
