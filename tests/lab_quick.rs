//! `concur lab --quick` end to end: it runs every experiment on a small matrix, its
//! numbers are present, positive and consistent, it leaves no process behind, and its
//! report renders in headless Chromium with no console errors and visible charts.
//!
//! One test function on purpose: the leftover-process check must not see servers
//! started by another test of this binary.

mod lab_support;

use lab_support::{check_rendering, marked_processes};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concur-lab-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

fn metric(p: &Value, name: &str) -> Option<f64> {
    p["metrics"][name]["median"].as_f64()
}

fn check_results(results: &Value) {
    let points = results["points"].as_array().expect("points");
    for exp in ["cpu", "echo", "scaling", "fibload"] {
        let measured: Vec<&Value> = points
            .iter()
            .filter(|p| p["experiment"] == exp && p["error"].is_null())
            .collect();
        assert!(
            !measured.is_empty(),
            "experiment {exp} has no measured point"
        );
        assert!(
            results["answers"][exp]
                .as_str()
                .is_some_and(|a| !a.is_empty() && a != "Not measured."),
            "experiment {exp} has no answer"
        );
    }
    for p in points {
        for (name, stat) in p["metrics"].as_object().unwrap() {
            for key in ["median", "min", "max"] {
                let x = stat[key].as_f64().unwrap();
                assert!(
                    x.is_finite() && x >= 0.0,
                    "{} {name} {key} = {x}",
                    p["server"]
                );
            }
        }
        let counted = p["experiment"] == "echo" || p["experiment"] == "fibload";
        if counted && p["error"].is_null() {
            let get = |k: &str| metric(p, k).unwrap_or_else(|| panic!("{k} missing: {p}"));
            assert_eq!(
                get("errors"),
                get("errors_by_kind"),
                "errors by kind must add up: {p}"
            );
            let (ok, rate, secs) = (get("requests_ok"), get("req_per_s"), get("elapsed_secs"));
            assert!(
                (rate * secs - ok).abs() <= ok * 0.01 + 1.0,
                "req/s x elapsed != ok: {p}"
            );
            if p["experiment"] == "echo" {
                let size = p["params"]["size"].as_f64().unwrap();
                assert!(
                    get("bytes_received") >= ok * size,
                    "fewer bytes than replies: {p}"
                );
            }
            assert!(get("server_cpu_secs") >= 0.0);
        }
        if p["experiment"] == "scaling" && p["error"].is_null() && p["skipped"].is_null() {
            let conns = p["params"]["conns"].as_f64().unwrap();
            assert_eq!(metric(p, "opened"), Some(conns), "{p}");
            assert_eq!(metric(p, "answered_ok"), Some(conns), "{p}");
            assert!(metric(p, "source_addrs").unwrap() >= 1.0, "{p}");
            assert!(metric(p, "server_processes").unwrap() >= 1.0, "{p}");
        }
    }
    check_scaling(results);
    // The models every machine can run must have produced real echo numbers.
    for model in ["threads", "async", "select"] {
        let p = points
            .iter()
            .find(|p| p["experiment"] == "echo" && p["server"] == model && p["error"].is_null())
            .unwrap_or_else(|| panic!("no echo point for {model}"));
        assert!(metric(p, "req_per_s").unwrap() > 0.0, "{p}");
        assert_eq!(metric(p, "errors"), Some(0.0), "{p}");
    }
    let cpu_threads = points
        .iter()
        .find(|p| p["experiment"] == "cpu" && p["server"] == "rust" && p["case"] == "mode=threads")
        .expect("cpu threads point");
    assert_eq!(metric(cpu_threads, "verified"), Some(1.0));
}

/// The scaling ladder: the rungs decided beforehand from the registry's facts are
/// skipped with their reason and no numbers; the rest measured what a connection
/// costs the server and the kernel; the report says which limits it read.
fn check_scaling(results: &Value) {
    let points: Vec<&Value> = results["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["experiment"] == "scaling")
        .collect();
    let rungs: Vec<f64> = results["params"]["hold_conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(rungs.len(), 2, "--quick climbs two rungs: {rungs:?}");
    assert!(
        rungs[1] > 1024.0,
        "the second rung is past FD_SETSIZE: {rungs:?}"
    );
    let at = |server: &str, conns: f64| {
        points
            .iter()
            .find(|p| p["server"] == server && p["params"]["conns"].as_f64() == Some(conns))
            .copied()
    };
    let skipped = |server: &str, conns: f64| -> String {
        let p = at(server, conns).unwrap_or_else(|| panic!("no {server} point at {conns}"));
        assert!(
            p["metrics"].as_object().unwrap().is_empty() && p["error"].is_null(),
            "a skipped rung has no numbers: {p}"
        );
        p["skipped"]
            .as_str()
            .unwrap_or_else(|| panic!("{server} at {conns} was not skipped: {p}"))
            .to_string()
    };
    // From the registry's facts, before starting anything: one client at a time and
    // fixed pools cannot hold the first rung, select cannot watch the second.
    for m in concur::models::REGISTRY {
        use concur::models::Ceiling;
        match m.ceiling {
            Ceiling::One => assert!(skipped(m.name, rungs[0]).contains("one client at a time")),
            Ceiling::Workers => assert!(skipped(m.name, rungs[0]).contains("clients at once")),
            Ceiling::FdSetSize => {
                assert!(at(m.name, rungs[0]).unwrap()["skipped"].is_null());
                assert!(skipped(m.name, rungs[1]).contains("FD_SETSIZE (1024)"));
            }
            _ => {}
        }
        // Nothing runs after a skipped rung.
        let mine: Vec<&&Value> = points.iter().filter(|p| p["server"] == m.name).collect();
        if let Some(i) = mine.iter().position(|p| !p["skipped"].is_null()) {
            assert_eq!(i + 1, mine.len(), "{}: rungs after a skip", m.name);
        }
    }
    // The event loops every machine runs held both rungs, and what it cost was read
    // from the hold: the server's user space and the kernel's, per connection.
    for model in ["epoll", "async"] {
        for &r in &rungs {
            let p = at(model, r).unwrap_or_else(|| panic!("{model} at {r}"));
            assert!(p["error"].is_null() && p["skipped"].is_null(), "{p}");
        }
    }
    let top: Vec<&&Value> = points
        .iter()
        .filter(|p| p["params"]["conns"].as_f64() == Some(rungs[1]) && p["skipped"].is_null())
        .collect();
    assert!(
        top.iter()
            .any(|p| metric(p, "kernel_b_per_conn").is_some_and(|b| b > 0.0)),
        "no kernel cost per connection at {}",
        rungs[1]
    );
    assert!(
        top.iter()
            .any(|p| metric(p, "server_b_per_conn").is_some_and(|b| b > 0.0)),
        "no server cost per connection at {}",
        rungs[1]
    );
    let answer = results["answers"]["scaling"].as_str().unwrap();
    assert!(answer.contains("FD_SETSIZE"), "{answer}");
    assert!(answer.contains("in the kernel"), "{answer}");
    let limits = &results["scaling_limits"];
    assert!(limits["fd_limit"].as_u64().unwrap() >= 1024, "{limits}");
    assert!(limits["thread_ceiling"].as_u64().unwrap() > 0, "{limits}");
    for exp in ["cpu", "echo", "scaling", "fibload"] {
        assert!(
            results["experiment_secs"][exp].as_f64().is_some(),
            "no run time for {exp}"
        );
    }
}

#[test]
fn quick_lab_measures_everything_and_cleans_up() {
    let dir = out_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["lab", "--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("run concur lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["report.html", "summary.md", "results.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    check_results(&results);
    let left = marked_processes(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    check_rendering(&dir);

    // --compare against itself: every point matched, nothing changed.
    let cmp = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["lab", "--out"])
        .arg(&dir)
        .arg("--compare")
        .arg(dir.join("results.json"))
        .output()
        .unwrap();
    assert!(cmp.status.success());
    let text = String::from_utf8_lossy(&cmp.stdout);
    let n = results["points"].as_array().unwrap().len();
    assert!(
        text.starts_with(&format!("{n} points in both runs")),
        "{text}"
    );
    assert!(!text.contains("new ") && !text.contains("gone "), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_exit_2_with_one_line() {
    for (args, needle) in [
        (&["lab", "--models", "fibers"][..], "unknown model 'fibers'"),
        (&["lab", "--experiments", "gpu"], "unknown experiment 'gpu'"),
        (
            &["lab", "--compare", "/nonexistent/results.json"],
            "cannot read",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn ctrl_c_stops_the_lab_writes_what_it_measured_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("concur-lab-int-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "lab",
            "--quick",
            "--experiments",
            "echo,scaling",
            "--no-python",
            "--out",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a server of this run is up, so the interrupt lands mid-experiment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while marked_processes(&dir.to_string_lossy()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lab started no server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["interrupted"], true);
    assert!(
        std::fs::read_to_string(dir.join("report.html"))
            .unwrap()
            .contains("interrupted")
    );
    let left = marked_processes(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
