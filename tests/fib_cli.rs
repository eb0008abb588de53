//! `concur fib` end to end: the real binary, every mode, JSON shape and bad input.

use std::process::Command;

fn concur(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur")
}

#[test]
fn all_modes_verify_in_json() {
    let out = concur(&["fib", "--n", "24,25,26", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let rows = report["rows"].as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    let wall = |r: &serde_json::Value| r["wall_secs"].as_f64().unwrap();
    assert_eq!(
        modes,
        [
            "sequential",
            "threads",
            "broken (as reported)",
            "broken (joined)",
            "processes",
            "pool"
        ]
    );
    let sequential = wall(&rows[0]);
    for row in rows {
        let wrong = row["wrong"].as_bool().unwrap();
        assert_eq!(wrong, row["mode"] == "broken (as reported)", "{row}");
        assert_eq!(row["verified"].as_bool().unwrap(), !wrong, "{row}");
        // Speedup is sequential's wall time over this row's.
        let speedup = row["speedup"].as_f64().unwrap();
        let expected = sequential / wall(row).max(1e-9);
        assert!(
            (speedup - expected).abs() <= 1e-9 * expected,
            "{row}: {speedup} vs {expected}"
        );
        assert!(row["cpu_secs"].is_f64(), "{row}");
    }
    assert_eq!(report["n"], serde_json::json!([24, 25, 26]));
    assert!(!report["answer"].as_str().unwrap().is_empty());
}

#[test]
fn table_marks_the_broken_figure() {
    let out = concur(&["fib", "--n", "20,20", "--mode", "broken"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let wrong = text
        .lines()
        .find(|l| l.starts_with("broken (as reported)"))
        .expect("row");
    assert!(wrong.contains("WRONG"), "{wrong}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("broken (joined)") && l.contains("yes"))
    );
}

#[test]
fn processes_mode_runs_children() {
    let out = concur(&["fib", "--n", "22,23", "--mode", "processes", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"][0]["mode"], "processes");
    assert_eq!(report["rows"][0]["verified"], true);
}

#[test]
fn pool_honours_workers() {
    let out = concur(&[
        "fib",
        "--n",
        "20,20,20",
        "--mode",
        "pool",
        "--workers",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["workers"], 3);
    assert_eq!(report["rows"][0]["verified"], true);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 6] = [
        (&["fib", "--n", "36,x"], "'x' is not a number"),
        (&["fib", "--n", "500"], "500 is out of range"),
        (&["fib", "--n", ""], "empty list"),
        (&["fib", "--workers", "0"], "0"),
        (&["fib", "--mode", "fibers"], "fibers"),
        (&["fib-worker", "99"], "out of range"),
    ];
    for (args, needle) in cases {
        let out = concur(args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_names_the_maximum() {
    let out = concur(&["fib", "--help"]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("0..=50"));
}
