//! `concur lab` with the user's own servers, through the real binary: a correct one
//! (the talk's threads server, given through --server, not built-in code), a plain echo
//! one (--server-prefix NAME=), one that corrupts a byte, one that never listens and
//! one that exits at start. The report and results.json show the correct ones measured
//! with zero errors, the corrupting one failing verification with its first wrong byte,
//! the other two with their reasons; no process is left behind and the report renders.
//!
//! Quick mode, echo and scaling only, built-ins skipped: it stays short.

mod lab_support;

use lab_support::{check_rendering, marked_processes};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concur-lab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// A threaded echo server in Python that puts `prefix` before each read and, with
/// `corrupt`, flips the lowest bit of the last byte of each reply.
fn echo_script(dir: &Path, name: &str, prefix: &str, corrupt: bool) -> PathBuf {
    let body = if corrupt {
        "d[:-1] + bytes([d[-1] ^ 1])"
    } else {
        "d"
    };
    let path = dir.join(format!("{name}.py"));
    std::fs::write(
        &path,
        format!(
            "import socketserver, sys\n\
             class H(socketserver.BaseRequestHandler):\n\
             \x20   def handle(self):\n\
             \x20       while d := self.request.recv(65536):\n\
             \x20           self.request.sendall({prefix:?}.encode() + {body})\n\
             class S(socketserver.ThreadingTCPServer):\n\
             \x20   daemon_threads = True\n\
             \x20   allow_reuse_address = True\n\
             \x20   request_queue_size = 1024\n\
             S(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
        ),
    )
    .unwrap();
    path
}

fn point<'a>(results: &'a Value, exp: &str, server: &str) -> Vec<&'a Value> {
    results["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["experiment"] == exp && p["server"] == server)
        .collect()
}

#[test]
fn own_servers_are_measured_checked_and_cleaned_up() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = temp_dir("servers-work");
    let out = temp_dir("servers");
    let plain = echo_script(&work, "plain", "", false);
    let wrong = echo_script(&work, "wrong", "Received: ", true);
    let threads = root.join("peers/python/threads.py");
    let run = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "lab",
            "--quick",
            "--servers-only",
            "--experiments",
            "echo,scaling",
            "--ready-timeout",
            "2s",
        ])
        .arg("--server")
        .arg(format!(
            "talk-threads=python3 '{}' --addr 127.0.0.1:{{port}}",
            threads.display()
        ))
        .arg("--server")
        .arg(format!("plain=python3 '{}' {{port}}", plain.display()))
        .args(["--server-prefix", "plain="])
        .arg("--server")
        .arg(format!("wrong=python3 '{}' {{port}}", wrong.display()))
        .args([
            "--server",
            "mute=echo 'warming up on {port}'; exec sleep 30",
        ])
        .args([
            "--server",
            "crash=echo 'no such config' >&2; exit 3 # {port}",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run concur lab");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&run.stdout)
    );
    // stderr is not a terminal here: one progress line per step, with what is left.
    let steps: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lab [")).collect();
    assert!(steps.len() >= 5, "{stderr}");
    assert!(steps[0].starts_with("lab [1/"), "{stderr}");
    assert!(steps[1..].iter().all(|l| l.contains(" left: ")), "{stderr}");
    assert!(stderr.contains("echo: starting talk-threads"), "{stderr}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // Every experiment's exact commands, the user's own among them.
    let echo_cmds = results["commands"]["echo"].as_array().unwrap();
    let has = |needle: &str| {
        echo_cmds
            .iter()
            .any(|c| c.as_str().unwrap().contains(needle))
    };
    assert!(has("plain.py' {port}"), "{echo_cmds:?}");
    assert!(has(" load --addr 127.0.0.1:{port}"), "{echo_cmds:?}");

    // The correct servers: measured, zero errors, at every echo case and the hold.
    for name in ["talk-threads", "plain"] {
        let echo = point(&results, "echo", name);
        assert_eq!(echo.len(), 2, "{name}: {echo:?}");
        for p in &echo {
            assert!(p["error"].is_null(), "{p}");
            assert!(p["metrics"]["req_per_s"]["median"].as_f64().unwrap() > 0.0);
            assert_eq!(p["metrics"]["errors"]["median"], 0.0, "{p}");
        }
        // A server the lab knows nothing about climbs every rung it can hold.
        let rungs = results["params"]["hold_conns"].as_array().unwrap().len();
        let hold = point(&results, "scaling", name);
        assert_eq!(hold.len(), rungs, "{name}: {hold:?}");
        for h in &hold {
            assert!(h["error"].is_null() && h["skipped"].is_null(), "{h}");
            assert_eq!(
                h["metrics"]["answered_ok"]["median"],
                h["params"]["conns"].as_f64().unwrap()
            );
        }
    }
    // The corrupting one: failing verification at its first wrong byte, no numbers,
    // and not measured again.
    let wrong_echo = point(&results, "echo", "wrong");
    assert_eq!(wrong_echo.len(), 1, "its other cases are not run");
    let why = wrong_echo[0]["error"].as_str().unwrap();
    assert!(why.starts_with("failed verification"), "{why}");
    // 10 prefix bytes + 64 payload bytes: the last one of the first reply is wrong.
    assert!(why.contains("offset 73"), "{why}");
    assert!(wrong_echo[0]["metrics"].as_object().unwrap().is_empty());
    let wrong_hold = point(&results, "scaling", "wrong");
    assert!(
        wrong_hold[0]["error"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{wrong_hold:?}"
    );
    // The one that never listens and the one that exits: their reasons, their words.
    let mute = point(&results, "echo", "mute")[0]["error"]
        .as_str()
        .unwrap();
    assert!(
        mute.contains("did not listen") && mute.contains("warming up on"),
        "{mute}"
    );
    let crash = point(&results, "echo", "crash")[0]["error"]
        .as_str()
        .unwrap();
    assert!(
        crash.contains("exit status: 3") && crash.contains("no such config"),
        "{crash}"
    );
    // No built-in server ran.
    assert!(
        results["points"].as_array().unwrap().iter().all(|p| [
            "talk-threads",
            "plain",
            "wrong",
            "mute",
            "crash"
        ]
        .contains(&p["server"].as_str().unwrap())),
        "--servers-only ran a built-in server"
    );

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for name in ["talk-threads", "plain", "wrong", "mute", "crash"] {
        assert!(html.contains(name), "{name} missing from the report");
    }
    assert!(html.contains("failed verification"));
    let left = marked_processes(&out.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    check_rendering(&out);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn bad_server_options_exit_2_with_one_line() {
    let dir = temp_dir("servers-bad");
    let file = dir.join("lab.toml");
    std::fs::write(&file, "[[server]]\nname = \"x\"\ncomand = \"y {port}\"\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    for (args, needle) in [
        (&["lab", "--server", "nocommand"][..], "NAME=COMMAND"),
        (&["lab", "--server", "mine=./srv 8080"], "{port}"),
        (&["lab", "--server", "epoll=./srv {port}"], "built-in"),
        (&["lab", "--servers-only"], "give your own"),
        (
            &["lab", "--server-prefix", "ghost="],
            "no echo server named ghost",
        ),
        (&["lab", "--config", &file], "comand"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(args)
            .arg("--out")
            .arg(dir.join("never"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!dir.join("never").exists(), "a refused run wrote nothing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A lab whose only server never starts measured nothing: it says which server and
/// why on the terminal, under the answer, and exits 1 (the report is still written).
#[test]
fn a_lab_that_measured_nothing_says_why_and_exits_1() {
    let out = temp_dir("nothing");
    let run = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "lab",
            "--quick",
            "--servers-only",
            "--experiments",
            "echo",
            "--ready-timeout",
            "2s",
            "--server",
            "ghost=no-such-server-binary --port {port}",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run concur lab");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("not measured: ghost:"))
        .unwrap_or_else(|| panic!("no line names the server: {stdout}"));
    assert!(line.contains("not found"), "{line}");
    assert!(out.join("report.html").is_file(), "the report is written");
    let _ = std::fs::remove_dir_all(&out);
}
