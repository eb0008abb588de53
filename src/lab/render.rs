//! Rendering: the views laid out as `report.html` (self-contained: inline SVG, no
//! script, nothing fetched) and `summary.md`, and `--compare`'s point-by-point text.

use super::fmt::{escape, human};
use super::results::Results;
use super::stats::Point;
use super::views::View;
use std::collections::BTreeMap;
use std::fmt::Write;

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
