//! `concur hold` spread over processes (`--processes`, or as many as the descriptor
//! limit requires), through the real binary: the children's counts merged exactly,
//! the source addresses numbered across the children, the stall rule across
//! children, Ctrl-C (the parent reports what its children measured) and SIGKILL (the
//! children die with the parent), and the refusals (too few processes, too little
//! memory). Waits read events (replies the server wrote, /proc), bounded only as a
//! guard against hangs.

mod common;
mod serve_harness;

use common::{Fault, counting_echo, echo, serve_seen, spawn};
use concur::hold::HoldReport;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A guard against hangs only; never a verdict.
const LIMIT: Duration = Duration::from_secs(60);

fn concur(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (bounded) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A bit of a signal mask line of /proc/PID/status (SigIgn, SigCgt).
fn signal_bit(pid: u32, field: &str, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// 300 connections over three processes, 50 per source address: the server sees
/// exactly 50 from each of 127.0.0.1 to .6 (so the children number their connections
/// as one hold), and the merged report counts every one, with every round trip in
/// its histogram.
#[test]
fn three_processes_hold_as_one() {
    let (addr, seen) = serve_seen(echo(), Fault::None);
    let addr = addr.to_string();
    let (code, out, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "300",
        "--processes",
        "3",
        "--per-source",
        "50",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r: HoldReport = serde_json::from_str(&out).expect("one hold report");
    assert_eq!(r.processes, 3);
    assert_eq!(
        (r.conns, r.opened, r.failed, r.answered_ok),
        (300, 300, 0, 300),
        "{out}"
    );
    assert_eq!((r.rtt_errors.total(), r.closed_while_holding), (0, 0));
    assert_eq!(r.in_flight, 1, "the bound holds across the processes");
    assert_eq!(r.source_addrs, 6);
    let h = concur::load::report::decode_histogram(&r.histogram).expect("histogram");
    assert_eq!(h.len(), 300, "every round trip, from every process");
    assert!(r.open_secs > 0.0 && r.open_per_sec > 0.0, "{out}");
    assert!(r.window_end_unix >= r.window_start_unix);
    let peers = seen.peers.lock().unwrap().clone();
    let want: Vec<(IpAddr, u64)> = (1..=6)
        .map(|d| (IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)), 50))
        .collect();
    assert_eq!(peers.into_iter().collect::<Vec<_>>(), want);
    // The kernel's figures: at the peak, at least both ends of all 300 were in use.
    let k = r.kernel.expect("kernel figures on Linux");
    assert!(k.both_ends);
    assert!(k.tcp_inuse_holding >= 600, "{k:?}");
}

/// A server that never answers: the first child's first round trip times out with
/// none other answered, and every other connection, in that child and in the
/// others, counts as not tried (one timeout in all, not one per process).
#[test]
fn a_stall_in_one_process_ends_the_round_trips_of_all() {
    let (addr, _) = serve_seen(echo(), Fault::Silent);
    let addr = addr.to_string();
    let (code, out, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "30",
        "--processes",
        "3",
        "--timeout",
        "1s",
        "--duration",
        "0s",
        "--json",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let r: HoldReport = serde_json::from_str(&out).expect("one hold report");
    assert_eq!((r.opened, r.answered_ok), (30, 0), "{out}");
    assert_eq!(
        (r.rtt_errors.timeout, r.rtt_errors.not_tried),
        (1, 29),
        "{out}"
    );
}

/// Ctrl-C while three processes hold: the children ignore SIGINT (only the parent
/// decides), the parent stops them, merges what they measured and prints it marked
/// interrupted, exit 130; every child has ended.
#[test]
fn ctrl_c_reports_what_every_process_measured() {
    let (addr, replies) = counting_echo();
    let conns = 30u64;
    let child = spawn(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        &conns.to_string(),
        "--processes",
        "3",
        "--duration",
        "60s",
        "--json",
    ]);
    let pid = child.id();
    // Every round trip answered: it is holding (the last reply may still be on its
    // way to its process).
    wait_for("every round trip answered", || {
        replies.load(Ordering::SeqCst) >= conns
    });
    let kids = concur::sys::children(pid);
    assert_eq!(kids.len(), 3, "{kids:?}");
    for &kid in &kids {
        assert!(signal_bit(kid, "SigIgn:", libc::SIGINT), "child {kid}");
        assert!(signal_bit(kid, "SigCgt:", libc::SIGTERM), "child {kid}");
    }
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().expect("hold's output");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["interrupted"], true, "{v}");
    assert_eq!(v["processes"], 3, "{v}");
    assert_eq!(v["opened"], conns, "{v}");
    assert!(v["answered_ok"].as_u64().unwrap() >= conns - 1, "{v}");
    assert_eq!(v["closed_while_holding"], 0, "{v}");
    for kid in kids {
        wait_for("a child ended", || ended(kid));
    }
}

/// The parent killed outright (as a second Ctrl-C exits it): its children die with
/// it, holding nothing.
#[test]
fn children_die_with_the_parent() {
    let (addr, replies) = counting_echo();
    let mut child = spawn(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "20",
        "--processes",
        "2",
        "--duration",
        "60s",
    ]);
    wait_for("every round trip answered", || {
        replies.load(Ordering::SeqCst) >= 20
    });
    let kids = concur::sys::children(child.id());
    assert_eq!(kids.len(), 2, "{kids:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    for kid in kids {
        wait_for("a child died with its parent", || ended(kid));
    }
}

/// Refused with one line and exit 2, before anything is opened: a share above one
/// process's descriptor limit, and a hold the machine's memory cannot take.
#[test]
fn refusals_name_the_numbers() {
    let (addr, _) = serve_seen(echo(), Fault::None);
    let addr = addr.to_string();
    let limit = concur::sys::raise_fd_limit().unwrap();
    let conns = (2 * limit).to_string();
    let (code, _, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        &conns,
        "--processes",
        "1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let need = (2 * limit).div_ceil(limit - concur::hold::SPARE_FDS);
    assert!(
        err.contains(&format!("--processes {need} or more")),
        "{err}"
    );

    let avail = concur::sys::KernelMemory::read()
        .unwrap()
        .mem_available_bytes;
    let per = concur::hold::KERNEL_BYTES_PER_CONN
        + concur::hold::CLIENT_BYTES_PER_CONN
        + concur::hold::SERVER_BYTES_PER_CONN;
    let conns = (avail / per * 2).to_string();
    let (code, _, err) = concur(&["hold", "--addr", &addr, "--conns", &conns]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("MemAvailable") && err.contains(&format!("{per} B per connection")),
        "{err}"
    );
}

/// A forking server's memory is its whole tree's: `--server-pid` of a `reuseport
/// --fork` server counts the parent and its three workers, measured as PSS (which
/// never exceeds summed RSS: shared pages are split, not counted once per process),
/// with private memory (a part of it) for the growth.
#[test]
fn a_forking_servers_tree_is_measured_as_pss() {
    let server = serve_harness::Server::start("reuseport", "echo", &["--workers", "3", "--fork"]);
    let pid = server.pid.to_string();
    let addr = server.addr.to_string();
    let (code, out, err) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "200",
        "--duration",
        "0s",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r: HoldReport = serde_json::from_str(&out).unwrap();
    let s = r.server.expect("server figures");
    assert_eq!((s.processes_before, s.processes_holding), (4, 4), "{s:?}");
    assert_eq!((s.children_before, s.children_holding), (3, 3), "{s:?}");
    assert_eq!(s.memory, "pss");
    let (pss, rss) = (s.pss_holding_bytes.unwrap(), s.rss_holding_bytes);
    assert!(pss > 0 && pss <= rss, "{s:?}");
    // Private pages are part of the PSS; the growth is read from them.
    assert!(s.private_holding_bytes.unwrap() <= pss, "{s:?}");
    let (_, text, _) = concur(&[
        "hold",
        "--addr",
        &addr,
        "--conns",
        "20",
        "--duration",
        "0s",
        "--server-pid",
        &pid,
    ]);
    assert!(text.contains("PSS summed over the process tree"), "{text}");
    assert!(text.contains("processes 4 -> 4"), "{text}");
}
