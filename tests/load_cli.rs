//! `concur load` as a script sees it: JSON keys, exit statuses, one-line errors.

mod common;
mod serve_harness;

use common::{Fault, echo, fib, serve};
use std::process::Command;

fn concur(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn json_keys_and_exit_zero() {
    let addr = serve(echo(), Fault::None).to_string();
    let (code, out, err) = concur(&[
        "load",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--requests",
        "200",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["requests_ok"], 200);
    assert_eq!(v["errors_total"], 0);
    for kind in ["refused", "timeout", "mismatch", "closed_early"] {
        assert_eq!(v["errors"][kind], 0, "{kind}");
    }
    // The rates are the counts over elapsed_secs, the time the server answered.
    let secs = v["elapsed_secs"].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let rps = v["req_per_s"].as_f64().unwrap();
    assert!(close(rps, 200.0 / secs), "{rps} req/s over {secs} s");
    let received = v["bytes_received"].as_f64().unwrap();
    let mbps = v["mb_per_s"].as_f64().unwrap();
    assert!(close(mbps, received / secs / 1e6), "{mbps} MB/s");
    let lat: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|p| v["latency_us"][p].as_f64().unwrap())
        .collect();
    assert!(lat.windows(2).all(|w| w[0] <= w[1]), "{lat:?}");
    let report: concur::load::LoadReport = serde_json::from_str(&out).expect("LoadReport");
    // What merging needs: every verified request in the histogram, the window on the
    // wall clock (as long as the run), the parameters.
    let h = concur::load::report::decode_histogram(&report.histogram).expect("V2 histogram");
    assert_eq!(h.len(), 200);
    let window = report.window_end_unix - report.window_start_unix;
    // Equal up to f64 rounding at Unix-time magnitude (~1e-7 s), whatever the speed.
    let rounding = report.window_end_unix * f64::EPSILON * 4.0;
    assert!(
        (window - secs).abs() <= rounding,
        "window {window} s, elapsed {secs} s"
    );
    assert!(report.window_start_unix > 0.0);
    assert_eq!(
        (report.size, report.requests, report.agents),
        (64, Some(200), 1)
    );
    assert_eq!(report.prefix, "Received: ");
}

#[test]
fn mismatch_exits_one_and_says_where() {
    let addr = serve(fib(), Fault::CorruptEvery(3)).to_string();
    let (code, out, _) = concur(&[
        "load",
        "--addr",
        &addr,
        "--service",
        "fib",
        "--conns",
        "1",
        "--requests",
        "10",
    ]);
    assert_eq!(code, 1);
    // Every third line is "#5": the server's line is shown, then where it went wrong.
    assert!(
        out.contains(
            "first mismatch: server answered \"#5\" at offset 6, conn 0 \
             (request 2: expected '5', got '#' at offset 6)"
        ),
        "{out}"
    );
}

/// A real fib server asked fib(43), above its default --max-n 42, answers an error
/// line; the report shows that line (text and JSON), not just its first byte. So does
/// an echo client sent to the fib server by mistake.
#[test]
fn a_servers_error_line_is_what_the_mismatch_shows() {
    let server = serve_harness::Server::start("epoll", "fib", &[]);
    let addr = server.addr.to_string();
    let load = ["load", "--addr", &addr, "--conns", "2", "--requests", "10"];
    let fib43 = ["--service", "fib", "--n", "43"];
    let (code, out, err) = concur(&[&load[..], &fib43].concat());
    assert_eq!(code, 1, "{err}");
    let first_digit = concur::fib::exact(43).to_string().as_bytes()[0];
    let want = format!(
        "server answered \"ERR n out of range 0..=42\" at offset 0, conn 0 \
         (request 0: expected '{}', got 'E' at offset 0)",
        first_digit as char
    );
    assert!(out.contains(&format!("first mismatch: {want}")), "{out}");
    assert!(
        out.contains("errors: refused 0  timeout 0  mismatch 2"),
        "{out}"
    );

    let (code, out, err) = concur(&[&load[..], &fib43, &["--json"]].concat());
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let m = &v["first_mismatch"];
    assert_eq!(m["received"], "ERR n out of range 0..=42", "{v}");
    assert_eq!(
        (m["received_offset"].as_u64(), m["offset"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(m["got"].as_u64(), Some(u64::from(b'E')), "{v}");
    assert_eq!(m["expected"].as_u64(), Some(u64::from(first_digit)), "{v}");
    let r: concur::load::LoadReport = serde_json::from_str(&out).expect("reads back");
    assert_eq!(
        r.first_mismatch.and_then(|m| m.received).as_deref(),
        Some("ERR n out of range 0..=42")
    );

    // An echo client's 65-byte payload is past the fib server's 64-byte request bound.
    let (code, out, err) = concur(&[&load[..], &["--service", "echo", "--size", "65"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("first mismatch: server answered \"ERR request too long\" at offset 0"),
        "{out}"
    );
    assert!(
        out.contains("(request 0: expected 'R', got 'E' at offset 0)"),
        "{out}"
    );
}

#[test]
fn bad_arguments_exit_two_with_one_line() {
    for args in [
        &["load", "--addr", "127.0.0.1:1", "--duration", "10x"][..],
        &["load", "--addr", "127.0.0.1:1", "--mix", "heavy=20"],
        &["load", "--addr", "127.0.0.1:1", "--conns", "0"],
        &["load", "--addr", "nowhere"],
        &["load", "--addr", "127.0.0.1:1", "--conns", "4000000000"],
        &[
            "load",
            "--addr",
            "127.0.0.1:1",
            "--server-pid",
            "4000000000",
        ],
        &["load", "--addr", "127.0.0.1:1", "--rate", "0"],
        &["hold", "--addr", "127.0.0.1:1", "--duration", "5"],
        &["hold", "--addr", "127.0.0.1:1", "--in-flight", "0"],
    ] {
        let (code, _, err) = concur(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn mix_measures_fib_1_beside_the_heavy_connection() {
    let addr = serve(fib(), Fault::None).to_string();
    let (code, out, err) = concur(&[
        "load",
        "--addr",
        &addr,
        "--service",
        "fib",
        "--conns",
        "3",
        "--mix",
        "heavy=20",
        "--duration",
        "300ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (light, heavy) = (
        v["requests_ok"].as_u64().unwrap(),
        v["heavy"]["requests_ok"].as_u64().unwrap(),
    );
    assert!(light > 0 && heavy > 0, "{out}");
    assert_eq!(v["heavy"]["n"], 20);
    // fib(1) = 1 is "1\n"; fib(20) = 6765 is "6765\n".
    assert_eq!(v["bytes_received"].as_u64().unwrap(), light * 2 + heavy * 5);
}

#[test]
fn requests_past_the_budget_counter_are_refused() {
    let addr = dead_port_text();
    for too_many in ["9223372036854775808", "18446744073709551616"] {
        let (code, out, err) = concur(&["load", "--addr", &addr, "--requests", too_many]);
        assert_eq!(code, 2, "{too_many}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--requests"), "{err}");
    }
}

fn dead_port_text() -> String {
    common::dead_port().to_string()
}

/// One rule for both clients: a zero timeout is refused (every round trip would time
/// out), and so is a run given two ends (`--requests` and `--duration`).
#[test]
fn zero_timeouts_and_two_ends_are_refused_in_one_line() {
    for (args, names) in [
        (
            &["load", "--addr", "127.0.0.1:1", "--timeout", "0s"][..],
            &["--timeout"][..],
        ),
        (
            &["hold", "--addr", "127.0.0.1:1", "--timeout", "0s"],
            &["--timeout"],
        ),
        (
            &["load", "--addr", "127.0.0.1:1", "--duration", "0s"],
            &["--duration"],
        ),
        (
            &[
                "load",
                "--addr",
                "127.0.0.1:1",
                "--requests",
                "1000",
                "--duration",
                "1s",
            ],
            &["--requests", "--duration"],
        ),
    ] {
        let (code, out, err) = concur(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        for name in names {
            assert!(err.contains(name), "{args:?}: {err}");
        }
    }
}

/// `hold --duration 0s` opens, verifies and closes: every connection answered.
#[test]
fn hold_for_zero_seconds_opens_verifies_and_closes() {
    let addr = serve(echo(), Fault::None).to_string();
    let (code, out, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "10",
        "--duration",
        "0s",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(
        (v["opened"].as_u64(), v["answered_ok"].as_u64()),
        (Some(10), Some(10)),
        "{v}"
    );
    assert_eq!(v["duration_secs"], 0.0, "{v}");
}

/// The server's process id is `--server-pid` on both clients; hold keeps `--pid`
/// as a visible alias (scripts use it).
#[test]
fn server_pid_is_one_name_and_pid_an_alias_on_hold() {
    let addr = serve(echo(), Fault::None).to_string();
    let me = std::process::id().to_string();
    for flag in ["--server-pid", "--pid"] {
        let (code, out, err) = concur(&[
            "hold",
            "--addr",
            &addr,
            "--conns",
            "2",
            "--duration",
            "0s",
            flag,
            &me,
            "--json",
        ]);
        assert_eq!(code, 0, "{flag}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert_eq!(
            v["server"]["pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{flag}: {v}"
        );
    }
    let (code, out, _) = concur(&["hold", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--server-pid <PID>"), "{out}");
    assert!(out.contains("[alias: --pid]"), "{out}");
    let (code, _, err) = concur(&[
        "hold",
        "--addr",
        "127.0.0.1:1",
        "--server-pid",
        "4000000000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--server-pid 4000000000"), "{err}");
    let (code, out, _) = concur(&["load", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--server-pid <PID>"), "{out}");
}

/// Run concur, killing it if it outlives `limit` (a guard against hangs: then `None`).
fn concur_within(args: &[&str], limit: std::time::Duration) -> Option<(i32, String, String)> {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run concur");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Some((status.code().unwrap_or(-1), out, err))
}

/// Against a closed port nothing is measured: no rate, no percentiles, and both
/// clients stop at once instead of waiting out a 10-minute --duration.
#[test]
fn nothing_measured_prints_no_rates_or_percentiles_and_stops_at_once() {
    let addr = common::dead_port().to_string();
    let guard = std::time::Duration::from_secs(60);
    let (code, out, err) = concur_within(
        &["load", "--addr", &addr, "--conns", "2", "--duration", "10m"],
        guard,
    )
    .expect("load stopped although every connection was refused");
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("requests ok 0   errors 2"), "{out}");
    assert!(!out.contains("req/s") && !out.contains("MB/s"), "{out}");
    assert!(!out.contains("p50"), "{out}");

    let (code, out, err) = concur_within(
        &["hold", "--addr", &addr, "--conns", "5", "--duration", "10m"],
        guard,
    )
    .expect("hold stopped although nothing was held");
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("failed ECONNREFUSED: 5"), "{out}");
    assert!(out.contains("answered ok 0/5"), "{out}");
    assert!(!out.contains("p50") && !out.contains(" us"), "{out}");
}

/// A fib server that answers the first `n` requests (over all its connections), then
/// reads on and answers nothing: a server that hangs mid-run.
fn answers_then_hangs(n: u64) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut session = fib().session();
                let mut buf = [0u8; 4096];
                while let Ok(n_read @ 1..) = stream.read(&mut buf) {
                    let mut replies = Vec::new();
                    session.feed(&buf[..n_read], &mut replies);
                    for line in replies.split_inclusive(|&b| b == b'\n') {
                        let k = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if k < n && stream.write_all(line).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// When the server stops answering mid-run, the rates are over the time it answered
/// (first request to last verified reply), not the whole run: req/s is requests ok
/// over that time, in the JSON and as the table prints it.
#[test]
fn rates_are_over_the_time_the_server_answered() {
    let n = 2000;
    let addr = answers_then_hangs(n);
    // The run ends when both connections have timed out, a second after their last
    // request went unanswered; --duration only guards.
    let args = [
        "load",
        "--addr",
        &addr,
        "--service",
        "fib",
        "--conns",
        "2",
        "--duration",
        "10m",
        "--timeout",
        "1s",
    ];
    let guard = std::time::Duration::from_secs(120);
    let (code, out, err) = concur_within(&[&args[..], &["--json"]].concat(), guard)
        .expect("load stopped once every connection had timed out");
    assert_eq!(code, 1, "{err}");
    let r: concur::load::LoadReport = serde_json::from_str(&out).expect("one report");
    assert_eq!((r.requests_ok, r.errors.timeout, r.errors_total), (n, 2, 2));
    assert_eq!((r.requests_failed, r.requests_unfinished), (2, 0));
    assert_eq!(r.bytes_received, n * "55\n".len() as u64);
    let (answered, run) = (r.elapsed_secs, r.run_secs.expect("run_secs"));
    assert!(answered > 0.0 && run > answered, "{r:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(r.req_per_s, n as f64 / answered), "{r:?}");
    assert!(
        close(r.mb_per_s, r.bytes_received as f64 / answered / 1e6),
        "{r:?}"
    );
    // The answered window is elapsed_secs long, the run run_secs (up to f64 rounding
    // at Unix-time magnitude).
    let rounding = r.window_start_unix * f64::EPSILON * 4.0;
    assert!((r.window_end_unix - r.window_start_unix - answered).abs() <= rounding);
    let run_end = r.run_end_unix.expect("run_end_unix");
    assert!((run_end - r.window_start_unix - run).abs() <= rounding);

    // The table: the run's length in the heading, then the rate and the time it is
    // over, which agree as printed (req/s to the unit, seconds to the millisecond).
    // (A fresh server: the first has answered its share.)
    let addr = answers_then_hangs(n);
    let mut args = args;
    args[2] = &addr;
    let (code, out, err) = concur_within(&args, guard).expect("load stopped");
    assert_eq!(code, 1, "{err}");
    let number_before = |line: &str, unit: &str| -> f64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == unit)
            .unwrap_or_else(|| panic!("no {unit} in {line:?}"));
        words[at - 1].parse().expect("a number")
    };
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?}: {out}"))
    };
    let ok = number_before(line("requests ok"), "errors");
    let rate = number_before(line("requests ok"), "req/s");
    let over = line("rates over the ");
    let secs: f64 = over["rates over the ".len()..]
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .expect("seconds");
    assert!(over.contains("the server answered"), "{out}");
    assert_eq!(ok, n as f64, "{out}");
    let lo = ok / (secs + 0.0005) - 0.5;
    let hi = if secs > 0.0005 {
        ok / (secs - 0.0005) + 0.5
    } else {
        f64::INFINITY
    };
    assert!(
        lo <= rate && rate <= hi,
        "{rate} req/s for {ok} in {secs} s: {out}"
    );
    let heading = out.lines().next().unwrap();
    let run: f64 = heading
        .rsplit('|')
        .next()
        .and_then(|t| t.trim().trim_end_matches(" s").parse().ok())
        .expect("the run's length");
    assert!(run > secs, "{out}");
}

/// An open loop far short of --rate says so in one warning line on stderr (and
/// --quiet silences it); the report itself is unchanged.
#[test]
fn rate_far_above_what_was_achieved_warns_once() {
    let addr = serve(echo(), Fault::None).to_string();
    let run = |quiet: bool| {
        let mut args = vec![
            "load",
            "--addr",
            &addr,
            "--conns",
            "2",
            "--rate",
            "1000000000",
            "--duration",
            "300ms",
            "--json",
        ];
        if quiet {
            args.push("--quiet");
        }
        concur(&args)
    };
    let (code, out, err) = run(false);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(v["requests_ok"].as_u64().unwrap() > 0, "{v}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("--rate 1000000000 req/s asked"),
        "{err}"
    );
    assert!(warnings[0].contains("req/s achieved"), "{err}");
    let (code, _, err) = run(true);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
}

/// A server whose memory did not grow while held gets no "0 B per connection": the
/// figure is said not to be a per-connection cost. (The pid read is a process that
/// does nothing, so its memory cannot grow.)
#[test]
fn hold_without_memory_growth_does_not_claim_a_per_connection_cost() {
    let addr = serve(echo(), Fault::None).to_string();
    let mut idle = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("start sleep");
    let pid = idle.id().to_string();
    // Until `sleep` is asleep its memory still changes: the forked test process,
    // then exec, then the dynamic loader. Wait until it blocks in (clock_)nanosleep.
    let asleep = |syscall: String| {
        let nr = syscall.split_whitespace().next().unwrap_or("");
        nr == libc::SYS_clock_nanosleep.to_string() || nr == libc::SYS_nanosleep.to_string()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !asleep(std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default()) {
        assert!(std::time::Instant::now() < deadline, "sleep never slept");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (code, out, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "5",
        "--duration",
        "0s",
        "--server-pid",
        &pid,
    ]);
    let _ = idle.kill();
    let _ = idle.wait();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("server pid {pid}:")), "{out}");
    assert!(out.contains("not a per-connection cost"), "{out}");
    assert!(!out.contains("per connection)"), "{out}");
}
