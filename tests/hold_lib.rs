//! `concur::hold::run_hold` against in-process servers (and one real `concur serve`
//! for /proc): exact counts, the bound on round trips in flight as the server saw
//! it, source addresses spread over 127.0.0.x, and failures by kind.

mod common;
mod serve_harness;

use common::{Fault, dead_port, echo, fib, serve, serve_gated, serve_seen};
use concur::hold::{HoldConfig, run_hold};
use concur::load::Service;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

/// Hold only briefly: these tests are about the counts, not the holding.
fn config(addr: std::net::SocketAddr, conns: usize) -> HoldConfig {
    let mut c = HoldConfig::new(addr.to_string(), conns);
    c.duration = Duration::from_millis(200);
    c.timeout = Duration::from_secs(10);
    c
}

#[test]
fn in_flight_bound_is_reached_and_never_exceeded() {
    // The gated server answers only full batches of k, so a client that keeps k in
    // flight makes it see exactly k outstanding; more would show, fewer would hang
    // until hold's own timeout and fail the counts.
    for k in [1, 7] {
        let conns = 100;
        let (addr, gate) = serve_gated(k, conns);
        let mut c = config(addr, conns as usize);
        c.service = Service::Fib;
        c.in_flight = k as usize;
        c.duration = Duration::ZERO;
        let r = run_hold(&c).expect("hold");
        assert_eq!(
            (r.opened, r.answered_ok, r.rtt_errors.total()),
            (conns, conns, 0),
            "k {k}: {r:?}"
        );
        assert_eq!(r.in_flight, k as usize);
        // run_hold has returned, so every connection is closed: wait for the server
        // to see each one end.
        let seen = gate.finished(conns as usize);
        assert_eq!(seen.max_outstanding, k, "k {k}: {seen:?}");
        assert_eq!(seen.arrivals, conns, "k {k}");
        assert_eq!(seen.requests_per_conn.len(), conns as usize, "k {k}");
        assert!(
            seen.requests_per_conn.iter().all(|&n| n == 1),
            "k {k}: one round trip per connection: {:?}",
            seen.requests_per_conn
        );
    }
}

#[test]
fn holds_200_over_four_source_addresses() {
    let (addr, seen) = serve_seen(echo(), Fault::None);
    let mut c = config(addr, 200);
    c.per_source = 50;
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.failed, r.answered_ok), (200, 0, 200), "{r:?}");
    assert_eq!(r.source_addrs, 4);
    assert_eq!(r.closed_while_holding, 0);
    assert!(r.rtt_us.p50 <= r.rtt_us.p99 && r.rtt_us.p99 <= r.rtt_us.max);
    assert_eq!(r.exit_code(), 0);
    let peers = seen.peers.lock().unwrap().clone();
    let want: Vec<(IpAddr, u64)> = (1..=4)
        .map(|d| (IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)), 50))
        .collect();
    assert_eq!(peers.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn server_growth_is_read_from_proc() {
    // A real thread-per-connection server in its own process, so no other test's
    // threads move its numbers.
    let server = serve_harness::Server::start("threads", "echo", &[]);
    let mut c = config(server.addr, 200);
    c.server_pid = Some(server.pid);
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.answered_ok), (200, 200), "{r:?}");
    let s = r.server.clone().expect("server stats");
    assert_eq!(s.pid, server.pid);
    assert!(
        s.threads_holding >= s.threads_before + 200,
        "a thread per held connection: {s:?}"
    );
    assert_eq!((s.children_before, s.children_holding), (0, 0));
}

#[test]
fn holds_fib() {
    let addr = serve(fib(), Fault::None);
    let mut c = config(addr, 50);
    c.service = Service::Fib;
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.answered_ok), (50, 50), "{r:?}");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn refused_connections_are_counted_by_errno() {
    let r = run_hold(&config(dead_port(), 20)).expect("hold");
    assert_eq!((r.opened, r.failed), (0, 20));
    assert_eq!(r.failed_by_errno.get("ECONNREFUSED"), Some(&20));
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn wrong_replies_are_mismatches() {
    // A mismatch is an answer: the server is still answering, so every connection
    // is tried.
    let addr = serve(fib(), Fault::CorruptEvery(1));
    let mut c = config(addr, 30);
    c.service = Service::Fib;
    let r = run_hold(&c).expect("hold");
    assert_eq!(
        (r.opened, r.answered_ok, r.rtt_errors.mismatch),
        (30, 0, 30)
    );
    assert_eq!(r.rtt_errors.not_tried, 0);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn silent_server_times_out_once_per_window() {
    // Nothing is ever answered. All in flight at once: each times out. One at a
    // time: the first timeout shows the server stopped answering, and the rest are
    // not tried (rather than each waiting out its own timeout).
    let addr = serve(echo(), Fault::Silent);
    for (in_flight, timeouts, not_tried) in [(10, 10, 0), (1, 1, 9)] {
        let mut c = config(addr, 10);
        c.in_flight = in_flight;
        c.timeout = Duration::from_secs(1);
        let r = run_hold(&c).expect("hold");
        assert_eq!(
            (r.opened, r.answered_ok),
            (10, 0),
            "in flight {in_flight}: {r:?}"
        );
        assert_eq!(
            (r.rtt_errors.timeout, r.rtt_errors.not_tried),
            (timeouts, not_tried),
            "in flight {in_flight}: {r:?}"
        );
        assert_eq!(r.exit_code(), 1);
    }
}

#[test]
fn one_lost_reply_among_answers_is_one_timeout() {
    // The server never answers one connection but answers the others: with two in
    // flight, replies keep coming while that one waits, so it is one timeout and
    // every other connection is still tried.
    let addr = serve(echo(), Fault::SilentOnce);
    let mut c = config(addr, 20);
    c.in_flight = 2;
    c.timeout = Duration::from_secs(2);
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.answered_ok), (20, 19), "{r:?}");
    assert_eq!(
        (
            r.rtt_errors.timeout,
            r.rtt_errors.not_tried,
            r.rtt_errors.total()
        ),
        (1, 0, 1),
        "{r:?}"
    );
}

#[test]
fn server_closing_while_held_is_counted() {
    // The server answers, then closes: every round trip verifies, and every close
    // is seen while holding. The hold ends once nothing is left to hold, so the
    // long duration is only a guard.
    let addr = serve(echo(), Fault::CloseAfter(1));
    let mut c = config(addr, 25);
    c.duration = Duration::from_secs(60);
    let r = run_hold(&c).expect("hold");
    assert_eq!(r.opened, 25);
    assert_eq!((r.answered_ok, r.rtt_errors.total()), (25, 0), "{r:?}");
    assert_eq!(r.closed_while_holding, 25, "{r:?}");
    assert_eq!(r.exit_code(), 1);
}

fn concur(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_json_keys_table_and_too_many_conns() {
    let addr = serve(echo(), Fault::None).to_string();
    let hold = [
        "hold",
        "--addr",
        &addr,
        "--conns",
        "40",
        "--duration",
        "100ms",
    ];
    let out = concur(&[&hold[..], &["--json"]].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The keys `concur lab` reads, and the bound.
    for (key, want) in [
        ("opened", 40),
        ("failed", 0),
        ("answered_ok", 40),
        ("in_flight", 1),
    ] {
        assert_eq!(v[key], want, "{key}");
    }
    assert!(v["open_secs"].is_f64(), "{v}");
    let (p50, p99) = (
        v["rtt_us"]["p50"].as_f64().unwrap(),
        v["rtt_us"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 <= p99, "{v}");
    assert_eq!(v["rtt_errors"]["not_tried"], 0);
    let report: concur::hold::HoldReport = serde_json::from_slice(&out.stdout).expect("HoldReport");
    // What merging needs: every round trip in the histogram, and the window.
    let h = concur::load::report::decode_histogram(&report.histogram).expect("V2 histogram");
    assert_eq!(h.len(), 40);
    assert!(report.window_start_unix > 0.0, "{v}");
    assert!(report.window_end_unix >= report.window_start_unix, "{v}");
    assert_eq!(report.size, 16);
    assert_eq!(report.prefix, "Received: ");

    let out = concur(&[&hold[..], &["--in-flight", "4"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("round trip (4 in flight at most): answered ok 40/40"),
        "{text}"
    );

    let out = concur(&["hold", "--addr", &addr, "--conns", "4000000000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("file descriptors"), "{err}");
}
