//! The command line as a user meets it, through the real binary: errors that name what
//! is missing, negative numbers, writes to a full stdout, durations and n limits said
//! one way, `fib --json`, `lab --out` safety, `NO_COLOR`, completions, the man page
//! and `--quiet`.

mod serve_harness;

use serve_harness::{Server, read_to_eof};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn concur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run concur")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit 2, nothing on stdout, no panic; the stderr text.
fn refused(args: &[&str]) -> String {
    let out = concur(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    assert!(err.starts_with("error:"), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

/// A fresh directory under the system's temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concur-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_arguments_are_named_with_the_usage_line() {
    for (args, missing) in [
        (
            &["serve"][..],
            &["--model <MODEL>", "--service <SERVICE>"][..],
        ),
        (&["serve", "--model", "epoll"], &["--service <SERVICE>"]),
        (&["load"], &["--addr <ADDR>"]),
        (&["hold"], &["--addr <ADDR>"]),
    ] {
        let err = refused(args);
        assert!(
            err.starts_with("error: the following required arguments were not provided:"),
            "{err}"
        );
        for name in missing {
            assert!(
                err.lines().any(|l| l.trim() == *name),
                "{args:?} does not name {name}: {err}"
            );
        }
        let usage = format!("Usage: concur {}", args[0]);
        assert!(err.lines().any(|l| l.starts_with(&usage)), "{err}");
        // Trimmed of clap's noise: no blank lines, no "For more information".
        assert!(
            err.trim_end().lines().all(|l| !l.trim().is_empty()),
            "{err}"
        );
        assert!(!err.contains("For more information"), "{err}");
    }
}

#[test]
fn bare_concur_shows_usage_and_every_subcommand() {
    let out = concur(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("Usage: concur"), "{err}");
    for sub in [
        "fib",
        "serve",
        "models",
        "load",
        "hold",
        "lab",
        "completions",
        "man",
    ] {
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from: {err}"
        );
    }
    assert!(!err.lines().any(|l| l.contains("fib-worker")), "{err}");
}

#[test]
fn a_bad_value_is_one_line_with_the_valid_values() {
    for (args, needles) in [
        (
            &["fib", "--mode", "fibers"][..],
            &["'fibers'", "possible values: all, sequential, threads"][..],
        ),
        (
            &["serve", "--model", "thread", "--service", "echo"],
            &["possible values: blocking, threads", "'threads'"],
        ),
        (&["completions", "tcsh"], &["possible values: bash"]),
    ] {
        let err = refused(args);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}

#[test]
fn negative_numbers_must_be_positive_for_every_numeric_option() {
    let addr = ["--addr", "127.0.0.1:1"];
    let serve = ["serve", "--model", "epoll", "--service", "fib"];
    let mut cases: Vec<Vec<&str>> = Vec::new();
    for opt in ["--n", "--workers"] {
        cases.push(vec!["fib", opt, "-5"]);
    }
    for opt in ["--workers", "--max-n", "--max-conns", "--idle-timeout"] {
        cases.push([&serve[..], &[opt, "-5"]].concat());
    }
    for opt in [
        "--conns",
        "--requests",
        "--size",
        "--n",
        "--pipeline",
        "--rate",
        "--threads",
        "--server-pid",
    ] {
        cases.push([&["load"][..], &addr, &[opt, "-5"]].concat());
    }
    for opt in ["--conns", "--pid", "--per-source", "--batch", "--in-flight"] {
        cases.push([&["hold"][..], &addr, &[opt, "-5"]].concat());
    }
    for opt in ["--repeat", "--conns-max"] {
        cases.push(vec!["lab", opt, "-5"]);
    }
    for args in &cases {
        let err = refused(args);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("positive"), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    // A negative duration is not a number clap knows: still said plainly, with usage.
    for args in [
        &["hold", "--addr", "127.0.0.1:1", "--duration", "-1s"][..],
        &["load", "--addr", "127.0.0.1:1", "--timeout", "-.5s"],
    ] {
        let err = refused(args);
        assert!(err.contains("must be positive"), "{args:?}: {err}");
        assert!(err.contains(&format!("'{}'", args[4])), "{args:?}: {err}");
        assert!(err.contains("Usage: concur"), "{args:?}: {err}");
    }
}

/// Run `concur ARGS` with stdout on /dev/full: one error line, exit 1.
fn fails_on_a_full_stdout(args: &[&str]) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdout(full)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("error: writing to stdout"),
        "{args:?}: {err}"
    );
}

#[test]
fn a_full_stdout_is_one_line_and_exit_1() {
    for args in [
        &["fib", "--n", "20", "--mode", "sequential"][..],
        &["fib", "--n", "20", "--mode", "sequential", "--json"],
        &["fib-worker", "20"],
        &["models"],
        &["man"],
        &["completions", "bash"],
        &["--help"],
        &["fib", "--help"],
        &["--version"],
    ] {
        fails_on_a_full_stdout(args);
    }
}

/// `load`, `hold` and `merge` print their reports through the same checked write:
/// a full stdout is one line and exit 1 there too, after the measurement ran.
#[test]
fn reports_to_a_full_stdout_are_one_line_and_exit_1() {
    let server = Server::start("epoll", "echo", &[]);
    let addr = server.addr.to_string();
    let report = concur(&["load", "--addr", &addr, "--requests", "50", "--json"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let file = std::env::temp_dir().join(format!("concur-cli-{}.json", std::process::id()));
    std::fs::write(&file, &report.stdout).unwrap();
    let path = file.to_string_lossy().into_owned();
    for args in [
        &["load", "--addr", &addr, "--requests", "50"][..],
        &["load", "--addr", &addr, "--requests", "50", "--json"],
        &[
            "hold",
            "--addr",
            &addr,
            "--conns",
            "5",
            "--duration",
            "100ms",
        ],
        &["merge", &path, &path],
    ] {
        fails_on_a_full_stdout(args);
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn fib_json_is_one_line_per_object() {
    let out = concur(&["fib", "--n", "20,21", "--mode", "threads", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim_end()).unwrap();
    assert_eq!(report["n"], serde_json::json!([20, 21]));
    assert_eq!(report["rows"][0]["verified"], true);
}

#[test]
fn n_limits_are_one_set_named_in_help() {
    use concur::fib::{MAX_EXACT_N, MAX_N};
    use concur::protocol::DEFAULT_MAX_N;
    let help = |sub: &str| text(&concur(&[sub, "--help"]).stdout);
    let fib = help("fib");
    assert!(fib.contains(&format!("0..={MAX_N}")), "{fib}");
    let serve = help("serve");
    assert!(
        serve.contains(&format!("default: {DEFAULT_MAX_N}")),
        "{serve}"
    );
    assert!(serve.contains(&format!("at most {MAX_N}")), "{serve}");
    let load = help("load");
    assert!(load.contains(&format!("0..={MAX_EXACT_N}")), "{load}");
    // The bounds themselves, through the binary: 0 is a valid n everywhere.
    let out = concur(&["fib", "--n", "0", "--mode", "sequential", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let over = (MAX_N + 1).to_string();
    assert!(refused(&["fib", "--n", &over]).contains(&format!("0..={MAX_N}")));
    let err = refused(&[
        "serve",
        "--model",
        "epoll",
        "--service",
        "fib",
        "--max-n",
        &over,
    ]);
    assert!(err.contains(&format!("at most {MAX_N}")), "{err}");
    let over = (MAX_EXACT_N + 1).to_string();
    let err = refused(&["load", "--addr", "127.0.0.1:1", "--n", &over]);
    assert!(err.contains(&format!("0..={MAX_EXACT_N}")), "{err}");
}

#[test]
fn serve_idle_timeout_takes_durations_like_load_and_hold() {
    for value in ["300ms", "0.3"] {
        let server = Server::start_exact("epoll", "echo", &["--idle-timeout", value]);
        let mut client = server.connect();
        // The server closes the silent client: EOF (the socket's read timeout, the
        // harness's guard against a hang, would fail the read instead).
        assert!(read_to_eof(&mut client).is_empty(), "{value}");
    }
    let server = Server::start_exact("epoll", "echo", &["--idle-timeout", "0"]);
    let mut client = server.connect();
    client.write_all(b"hi").unwrap();
    let mut reply = [0u8; 12];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"Received: hi");
    for bad in ["5x", "5d", "soon"] {
        let err = refused(&[
            "serve",
            "--model",
            "epoll",
            "--service",
            "echo",
            "--idle-timeout",
            bad,
        ]);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("--idle-timeout"), "{err}");
    }
}

#[test]
fn lab_refuses_a_non_empty_out_unless_forced() {
    let dir = temp_dir("lab-out");
    let old = dir.join("results.json");
    std::fs::write(&old, "an earlier run").unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/old.log"), "old").unwrap();
    let lab = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_concur"))
            .args([
                "lab",
                "--quick",
                "--no-python",
                "--experiments",
                "cpu",
                "--out",
            ])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = lab(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains("results.json"), "{err}");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "an earlier run");

    let out = lab(&["--force", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&old).unwrap()).unwrap();
    assert!(results["points"].is_array());
    assert!(
        !dir.join("logs/old.log").exists(),
        "old logs left beside new ones"
    );
    assert!(dir.join("report.html").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `concur serve -v` with stderr on a pseudo-terminal, make one connection, and
/// return what the log wrote up to its line about that connection.
fn log_on_a_terminal(no_color: Option<&str>) -> String {
    let (mut master, slave) = open_pty();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
    cmd.args([
        "serve",
        "--model",
        "epoll",
        "--service",
        "echo",
        "--addr",
        "127.0.0.1:0",
        "-v",
    ])
    .env_remove("RUST_LOG")
    .env_remove("NO_COLOR")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(slave);
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = text(&line);
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("bad listening line {line:?}"))
        .parse()
        .unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !text(&log).contains(&client.local_addr().unwrap().to_string()) {
        assert!(Instant::now() < deadline, "no log line: {}", text(&log));
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => log.extend_from_slice(&buf[..n]),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text(&log)
}

/// A pseudo-terminal: the master as a file, the slave as a child's stdio.
fn open_pty() -> (std::fs::File, Stdio) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            Stdio::from_raw_fd(slave),
        )
    }
}

#[test]
fn logs_honour_no_color_on_a_terminal() {
    let coloured = log_on_a_terminal(None);
    assert!(
        coloured.contains('\x1b'),
        "a terminal gets colour: {coloured:?}"
    );
    for value in ["1", "yes"] {
        let plain = log_on_a_terminal(Some(value));
        assert!(plain.contains("127.0.0.1"), "{plain:?}");
        assert!(!plain.contains('\x1b'), "NO_COLOR={value}: {plain:?}");
    }
}

#[test]
fn completions_for_each_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _concur"),
        ("zsh", "#compdef concur"),
        ("fish", "complete -c concur"),
    ] {
        let out = concur(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(needle), "{shell}");
        for word in ["serve", "idle-timeout", "max-n", "quiet", "epoll"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        assert!(!script.contains("fib-worker"), "{shell}: a hidden command");
    }
    // The bash script is valid bash, when bash is here to say so.
    if let Ok(bash) = Command::new("bash")
        .args(["-n"])
        .stdin(Stdio::piped())
        .spawn()
    {
        let mut bash = bash;
        let script = concur(&["completions", "bash"]).stdout;
        bash.stdin.take().unwrap().write_all(&script).unwrap();
        assert!(bash.wait().unwrap().success(), "bash -n rejects the script");
    }
}

#[test]
fn man_pages_come_from_the_same_definitions() {
    let out = concur(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH concur 1"), "{page}");
    for word in ["serve", "load", "hold", "lab", "completions", "\\-\\-quiet"] {
        assert!(page.contains(word), "{word} missing from the page");
    }
    assert!(!page.contains("fib\\-worker"), "a hidden command");
    let serve = text(&concur(&["man", "serve"]).stdout);
    assert!(serve.contains(".TH concur-serve 1"), "{serve}");
    assert!(serve.contains("\\-\\-idle\\-timeout"), "{serve}");
    let err = refused(&["man", "nosuch"]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("serve"), "{err}");
}

/// Two clients against `--max-conns 1`: the second is refused with a warning in the
/// log, unless `--quiet`. The refused client's EOF comes after its warning is written.
fn refused_client_log(quiet: bool) -> String {
    let mut extra = vec!["--max-conns", "1"];
    if quiet {
        extra.push("--quiet");
    }
    let mut server = Server::start_exact("epoll", "echo", &extra);
    let mut first = server.connect();
    first.write_all(b"x").unwrap();
    let mut reply = [0u8; 11];
    first.read_exact(&mut reply).unwrap();
    let mut second = server.connect();
    assert!(read_to_eof(&mut second).is_empty());
    server.signal(libc::SIGTERM);
    drop(first);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    server.final_log(Duration::from_secs(20))
}

#[test]
fn quiet_leaves_only_results_and_errors() {
    let log = refused_client_log(false);
    assert!(log.contains("refused"), "{log}");
    let log = refused_client_log(true);
    assert!(log.is_empty(), "{log}");
    // Results still go to stdout; errors still get their line.
    let out = concur(&["fib", "--n", "10", "--mode", "sequential", "-q", "--json"]);
    assert!(out.status.success());
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());
    assert!(refused(&["-q", "fib", "--n", "x"]).contains("'x' is not a number"));
}
