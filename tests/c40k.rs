//! Past one process's descriptor limit on both sides, in CI: 40,000 connections held
//! by `concur serve --model reuseport --fork` (worker processes, each its own
//! descriptor table) and opened by a `concur hold` spread over processes. Every
//! connection must open, answer its one verified round trip and stay open; /proc must
//! show them spread over the server's workers and the hold's children, each process
//! below its own limit. No verdict depends on a clock: the waits are bounded only as
//! guards against a hang.
//!
//! On this machine (20,000 descriptors per process) 40,000 needs three processes on
//! each side, not two: two would have to hold 20,000 each, and each also needs its
//! standard streams, its epoll and its listener; the server's workers get a 10%
//! margin besides, because the kernel spreads connections over SO_REUSEPORT
//! listeners by a hash, not evenly.

mod serve_harness;

use concur::hold::{HoldReport, SPARE_FDS};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONNS: u64 = 40_000;

/// A guard against hangs, never a verdict.
const LIMIT: Duration = Duration::from_secs(120);

fn fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn forty_thousand_held_by_worker_processes_from_a_spread_hold() {
    let started = Instant::now();
    let limit = concur::sys::raise_fd_limit().unwrap();
    let per_process = limit - SPARE_FDS;
    // At least two processes on each side, whatever the limit: the point is spreading.
    let workers = (CONNS * 10 / 9).div_ceil(per_process).max(2);
    let processes = CONNS.div_ceil(per_process).max(2);
    let server = serve_harness::Server::start(
        "reuseport",
        "echo",
        &[
            "--workers",
            &workers.to_string(),
            "--fork",
            "--max-conns",
            &CONNS.to_string(),
        ],
    );
    let addr = server.addr.to_string();
    let pid = server.pid.to_string();
    let hold = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "hold",
            "--addr",
            &addr,
            "--conns",
            &CONNS.to_string(),
            "--processes",
            &processes.to_string(),
            "--duration",
            "10s",
            "--timeout",
            "30s",
            "--server-pid",
            &pid,
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concur hold");
    let hold_pid = hold.id();

    // While all are held: every client socket is in a worker, and the workers are
    // where the descriptors are. Read once the workers' sockets add up to all the
    // clients plus one listener each.
    let kids = concur::sys::children(server.pid);
    assert_eq!(kids.len() as u64, workers, "{kids:?}");
    let deadline = Instant::now() + LIMIT;
    let per_worker = loop {
        let counts: Vec<usize> = kids
            .iter()
            .map(|&k| serve_harness::socket_inodes(k).len())
            .collect();
        if counts.iter().sum::<usize>() as u64 == CONNS + workers {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never held them all: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        concur::sys::open_fds(server.pid).map(|n| n < 64),
        Some(true),
        "the parent only supervises: it holds no client"
    );
    for (&kid, &n) in kids.iter().zip(&per_worker) {
        let fds = concur::sys::open_fds(kid).unwrap() as u64;
        assert!(
            n > 1 && fds < fd_limit(kid),
            "worker {kid}: {n} sockets, {fds} descriptors: {per_worker:?}"
        );
    }
    // The hold's side: its children hold the client sockets, each below its limit.
    let hold_kids = concur::sys::children(hold_pid);
    assert_eq!(hold_kids.len() as u64, processes, "{hold_kids:?}");
    for &kid in &hold_kids {
        let fds = concur::sys::open_fds(kid).unwrap_or(0) as u64;
        assert!(fds < fd_limit(kid), "hold process {kid}: {fds} descriptors");
    }

    let out = hold.wait_with_output().expect("hold's report");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r: HoldReport = serde_json::from_slice(&out.stdout).expect("one hold report");
    assert_eq!(r.processes as u64, processes);
    assert_eq!(
        (r.opened, r.failed, r.answered_ok, r.closed_while_holding),
        (CONNS, 0, CONNS, 0),
        "{r:?}"
    );
    assert_eq!(r.rtt_errors.total(), 0, "{r:?}");
    let h = concur::load::report::decode_histogram(&r.histogram).unwrap();
    assert_eq!(h.len(), CONNS, "one round trip per connection");
    let s = r.server.expect("server figures");
    assert_eq!(s.processes_holding as u64, 1 + workers);
    eprintln!(
        "40,000 held: opened in {:.2} s ({:.0}/s), server {} B per connection ({}), whole test {:.1} s",
        r.open_secs,
        r.open_per_sec,
        s.bytes_per_conn(r.opened).unwrap_or(0),
        s.memory,
        started.elapsed().as_secs_f64()
    );
}
