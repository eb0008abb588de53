//! Ctrl-C keeps what was measured: `concur load` and `concur hold`, sent SIGINT while
//! they measure, print what they measured so far (marked interrupted) and exit 130;
//! a second SIGINT exits at once.
//!
//! "While they measure" is an event, not a sleep: the test's own echo server counts
//! the replies it has written.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A guard against hangs only; never a verdict.
const LIMIT: Duration = Duration::from_secs(30);

/// The talk's echo server (`Received: ` + each chunk read), counting its replies.
fn counting_echo() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let replies = Arc::new(AtomicU64::new(0));
    let counter = replies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    let reply = [b"Received: ", &buf[..n]].concat();
                    if stream.write_all(&reply).is_err() {
                        break;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, replies)
}

/// Wait until the server has sent `more` replies beyond `base`; panics past [`LIMIT`].
fn wait_replies(replies: &AtomicU64, base: u64, more: u64) {
    let deadline = Instant::now() + LIMIT;
    while replies.load(Ordering::SeqCst) < base + more {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concur")
}

fn sigint(child: &Child) {
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// Wait for the child (bounded), then its stdout and stderr.
fn finish(mut child: Child) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("concur did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
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
    (status, out, err)
}

#[test]
fn load_interrupted_prints_what_it_measured_and_exits_130() {
    let (addr, replies) = counting_echo();
    let child = spawn(&[
        "load",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--duration",
        "60s",
        "--json",
    ]);
    // 100 replies are out: it is measuring.
    wait_replies(&replies, 0, 100);
    sigint(&child);
    let (status, out, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["interrupted"], true, "{v}");
    assert!(v["requests_ok"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
    // Still exact: every request sent is accounted for.
    let sent = v["requests_sent"].as_u64().unwrap();
    let parts: u64 = ["requests_ok", "requests_failed", "requests_unfinished"]
        .iter()
        .map(|k| v[k].as_u64().unwrap())
        .sum();
    assert_eq!(sent, parts, "{v}");

    // The table says so too.
    let base = replies.load(Ordering::SeqCst);
    let child = spawn(&["load", "--addr", &addr, "--conns", "2", "--duration", "60s"]);
    wait_replies(&replies, base, 100);
    sigint(&child);
    let (status, out, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.starts_with("interrupted: stopped by Ctrl-C"), "{out}");
    assert!(out.contains("requests ok "), "{out}");
}

#[test]
fn hold_interrupted_prints_what_it_measured_and_exits_130() {
    let (addr, replies) = counting_echo();
    let conns = 20;
    let child = spawn(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        &conns.to_string(),
        "--duration",
        "60s",
        "--json",
    ]);
    // Every round trip answered: it is holding.
    wait_replies(&replies, 0, conns);
    sigint(&child);
    let (status, out, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["interrupted"], true, "{v}");
    assert_eq!(v["opened"], conns, "{v}");
    // The last reply may still be on its way when SIGINT lands (one in flight at once).
    assert!(v["answered_ok"].as_u64().unwrap() >= conns - 1, "{v}");
    assert_eq!(v["closed_while_holding"], 0, "{v}");
}

/// A bit of a signal mask line of /proc/PID/status (SigCgt, SigPnd, ShdPnd).
fn signal_bit(pid: u32, field: &str, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The second Ctrl-C is for a run that does not stop on the first: here, a connect
/// to a server whose accept queue is full (the SYN is dropped, so connect waits out
/// --timeout, 60 s; a blocking connect is not cut short by the first Ctrl-C). The
/// second SIGINT, sent once the first was delivered, exits 130 at once, printing
/// nothing.
#[test]
fn a_second_sigint_exits_at_once() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted) until a connect is no longer answered.
    let mut queued = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let addr = addr.to_string();
    let child = spawn(&[
        "load",
        "--addr",
        &addr,
        "--conns",
        "1",
        "--timeout",
        "60s",
        "--duration",
        "60s",
        "--json",
    ]);
    let pid = child.id();
    wait_for("the SIGINT handler installed", || {
        signal_bit(pid, "SigCgt:", libc::SIGINT)
    });
    sigint(&child);
    wait_for("the first SIGINT delivered", || {
        !signal_bit(pid, "SigPnd:", libc::SIGINT) && !signal_bit(pid, "ShdPnd:", libc::SIGINT)
    });
    sigint(&child);
    let (status, out, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.is_empty(), "the second Ctrl-C printed a report: {out}");
    drop(queued);
}
