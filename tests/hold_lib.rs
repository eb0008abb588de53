//! `concur::hold::run_hold` against in-process servers: exact counts, source
//! addresses spread over 127.0.0.x, /proc readings, and failures by kind.

mod common;

use common::{Fault, dead_port, echo, fib, serve};
use concur::hold::{HoldConfig, run_hold};
use concur::load::Service;
use std::process::Command;
use std::time::Duration;

fn config(addr: std::net::SocketAddr, conns: usize) -> HoldConfig {
    let mut c = HoldConfig::new(addr.to_string(), conns);
    c.duration = Duration::from_millis(200);
    c.timeout = Duration::from_secs(5);
    c
}

#[test]
fn holds_200_over_four_source_addresses() {
    let addr = serve(echo(), Fault::None);
    let mut c = config(addr, 200);
    c.per_source = 50;
    c.pid = Some(std::process::id());
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.failed, r.answered_ok), (200, 0, 200), "{r:?}");
    assert_eq!(r.source_addrs, 4);
    assert_eq!(r.closed_while_holding, 0);
    assert!(r.rtt_us.p50 > 0.0 && r.rtt_us.p99 >= r.rtt_us.p50);
    let s = r.server.clone().expect("server stats");
    assert!(
        s.threads_holding >= s.threads_before + 200,
        "the in-process server runs a thread per connection: {s:?}"
    );
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn holds_fib() {
    let addr = serve(fib(), Fault::None);
    let mut c = config(addr, 50);
    c.service = Service::Fib;
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.answered_ok), (50, 50), "{r:?}");
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
    let addr = serve(fib(), Fault::CorruptEvery(1));
    let mut c = config(addr, 30);
    c.service = Service::Fib;
    let r = run_hold(&c).expect("hold");
    assert_eq!(
        (r.opened, r.answered_ok, r.rtt_errors.mismatch),
        (30, 0, 30)
    );
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn silent_server_times_out() {
    let addr = serve(echo(), Fault::Silent);
    let mut c = config(addr, 10);
    c.timeout = Duration::from_millis(200);
    let r = run_hold(&c).expect("hold");
    assert_eq!((r.opened, r.answered_ok, r.rtt_errors.timeout), (10, 0, 10));
}

#[test]
fn server_closing_while_held_is_counted() {
    let addr = serve(echo(), Fault::CloseAfter(1));
    let r = run_hold(&config(addr, 25)).expect("hold");
    assert_eq!(r.opened, 25);
    assert_eq!(
        r.answered_ok + r.rtt_errors.closed_early,
        25,
        "the reply and the close may arrive in one read: {r:?}"
    );
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn cli_json_keys_and_too_many_conns() {
    let addr = serve(echo(), Fault::None).to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "hold",
            "--addr",
            &addr,
            "--conns",
            "40",
            "--duration",
            "100ms",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (key, want) in [("opened", 40), ("failed", 0), ("answered_ok", 40)] {
        assert_eq!(v[key], want, "{key}");
    }
    assert!(v["open_secs"].as_f64().unwrap() > 0.0);
    assert!(v["rtt_us"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["rtt_us"]["p99"].as_f64().unwrap() > 0.0);

    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["hold", "--addr", &addr, "--conns", "4000000000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("file descriptors"), "{err}");
}
