//! Ctrl-C keeps what was measured: `concur load` and `concur hold`, sent SIGINT while
//! they measure, print what they measured so far (marked interrupted) and exit 130;
//! a second SIGINT exits at once.
//!
//! "While they measure" is an event, not a sleep: the test's own echo server counts
//! the replies it has written.

mod common;

use common::{counting_echo, spawn};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A guard against hangs only; never a verdict.
const LIMIT: Duration = Duration::from_secs(30);

/// Wait until the server has sent `more` replies beyond `base`; panics past [`LIMIT`].
fn wait_replies(replies: &AtomicU64, base: u64, more: u64) {
    let deadline = Instant::now() + LIMIT;
    while replies.load(Ordering::SeqCst) < base + more {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
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
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).unwrap();
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
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

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A listening socket whose accept queue is full and never accepted: a connect to it
/// gets no SYN-ACK (Linux drops the SYN), so it waits, as for a filtered address.
/// Keep the returned streams (they hold the queue full) as long as it is used.
fn blackhole() -> (
    std::net::SocketAddr,
    socket2::Socket,
    Vec<std::net::TcpStream>,
) {
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
    (addr, listener, queued)
}

/// Whether process `pid` holds a TCP socket in SYN-SENT towards `port`: its connect
/// is waiting for an answer (matched by inode between /proc/PID/fd and /proc/net/tcp).
fn connect_stuck(pid: u32, port: u16) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        f.len() > 9
            && f[3] == "02"
            && f[2].ends_with(&format!(":{port:04X}"))
            && inodes.iter().any(|i| i == f[9])
    })
}

/// The first Ctrl-C also cuts short a connect that is waiting for a server that does
/// not answer (here: a full accept queue; --timeout 60 s): load stops connecting,
/// prints what it measured (nothing, marked interrupted) and exits 130.
#[test]
fn the_first_sigint_cuts_a_stuck_connect_short() {
    let (addr, _listener, queued) = blackhole();
    let port = addr.port().to_string();
    let addr = addr.to_string();
    for json in [true, false] {
        let mut args = vec![
            "load",
            "--addr",
            &addr,
            "--conns",
            "3",
            "--timeout",
            "60s",
            "--duration",
            "60s",
        ];
        if json {
            args.push("--json");
        }
        let child = spawn(&args);
        let pid = child.id();
        wait_for("a connect waiting in SYN-SENT", || {
            connect_stuck(pid, port.parse().unwrap())
        });
        sigint(&child);
        let (status, out, err) = finish(child);
        assert_eq!(status.code(), Some(130), "{err}");
        if json {
            let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
            assert_eq!(v["interrupted"], true, "{v}");
            // Nothing sent, nothing failed: the connects not made are not errors.
            assert_eq!(
                (v["requests_sent"].as_u64(), v["errors_total"].as_u64()),
                (Some(0), Some(0)),
                "{v}"
            );
        } else {
            assert!(out.starts_with("interrupted: stopped by Ctrl-C"), "{out}");
            assert!(out.contains("requests ok 0   errors 0"), "{out}");
        }
    }
    drop(queued);
}

/// The second Ctrl-C is for what the first cannot stop: here the report, written to
/// a pipe that is full and never read (a terminal paused with Ctrl-S blocks the same
/// way). Once load is blocked writing it, a second SIGINT exits 130 at once, and
/// nothing more reaches the pipe.
#[test]
fn a_second_sigint_exits_at_once() {
    use std::os::fd::AsRawFd;
    let (addr, replies) = counting_echo();
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    // Fill the pipe, then make it blocking again for the child that inherits it.
    let fd = writer.as_raw_fd();
    // SAFETY: fcntl on a descriptor this test owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let mut filled = 0usize;
    for chunk in [4096, 1] {
        let block = vec![b'.'; chunk];
        while let Ok(n) = writer.write(&block) {
            filled += n;
        }
    }
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    let child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["load", "--addr", &addr, "--conns", "2", "--duration", "60s"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concur");
    let pid = child.id();
    wait_replies(&replies, 0, 100);
    sigint(&child);
    // Its main thread blocks in write(2) (or writev) on stdout, the report in hand.
    wait_for("load blocked writing its report", || {
        let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let mut f = call.split_whitespace();
        let (nr, fd) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        (nr == libc::SYS_write.to_string() || nr == libc::SYS_writev.to_string()) && fd == "0x1"
    });
    sigint(&child);
    let (status, _, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    let mut piped = Vec::new();
    reader.read_to_end(&mut piped).unwrap();
    assert_eq!(
        piped.len(),
        filled,
        "the report got into the pipe after all"
    );
    assert!(piped.iter().all(|&b| b == b'.'));
}
