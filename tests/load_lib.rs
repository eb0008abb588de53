//! `concur::load::run_load` against in-process servers: exact counts, every fault
//! reported with the right kind, and the open loop's corrected latency.

mod common;

use common::{Fault, dead_port, echo, fib, serve, serve_seen};
use concur::load::{LoadConfig, LoadReport, Service, run_load};
use concur::protocol::ServiceSpec;
use std::net::SocketAddr;
use std::time::Duration;

fn config(addr: SocketAddr, service: Service) -> LoadConfig {
    let mut c = LoadConfig::new(addr.to_string(), service);
    c.timeout = Duration::from_secs(5);
    c
}

fn run(c: &LoadConfig) -> LoadReport {
    run_load(c).expect("load run")
}

#[test]
fn echo_counts_are_exact() {
    let addr = serve(echo(), Fault::None);
    let mut c = config(addr, Service::Echo);
    c.conns = 4;
    c.requests = Some(1000);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (1000, 0), "{r:?}");
    assert_eq!(r.bytes_sent, 1000 * 64);
    assert!(r.bytes_received >= 1000 * 74);
    assert_eq!(r.exit_code(), 0);
    let l = r.latency_us;
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
}

#[test]
fn pipelined_echo_over_two_threads_is_exact() {
    let addr = serve(echo(), Fault::None);
    let mut c = config(addr, Service::Echo);
    c.conns = 3;
    c.threads = 2;
    c.pipeline = 8;
    c.size = 1000;
    c.requests = Some(999);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (999, 0), "{r:?}");
    assert_eq!(r.bytes_sent, 999 * 1000);
}

#[test]
fn plain_echo_without_prefix() {
    let addr = serve(ServiceSpec::Echo { prefix: Vec::new() }, Fault::None);
    let mut c = config(addr, Service::Echo);
    c.prefix = Vec::new();
    c.requests = Some(300);
    c.pipeline = 4;
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (300, 0), "{r:?}");
    assert_eq!(r.bytes_received, 300 * 64);
}

#[test]
fn fib_counts_are_exact_with_both_terminators() {
    let addr = serve(fib(), Fault::None);
    for question in [false, true] {
        let mut c = config(addr, Service::Fib);
        c.n = 20;
        c.conns = 2;
        c.pipeline = 3;
        c.question = question;
        c.requests = Some(500);
        let r = run(&c);
        assert_eq!((r.requests_ok, r.errors_total), (500, 0), "{r:?}");
        assert_eq!(r.bytes_received, 500 * "6765\n".len() as u64);
    }
}

#[test]
fn server_chunk_boundary_at_every_position() {
    // The server reads k bytes at a time, so its prefix lands every k bytes of the
    // stream; over k = 1..=65 a boundary falls at every offset of a 64-byte payload.
    for k in 1..=65 {
        let addr = serve(echo(), Fault::ReadChunk(k));
        let mut c = config(addr, Service::Echo);
        c.conns = 1;
        c.pipeline = 2;
        c.requests = Some(6);
        let r = run(&c);
        assert_eq!(
            (r.requests_ok, r.errors.mismatch),
            (6, 0),
            "chunk {k}: {r:?}"
        );
    }
}

#[test]
fn corrupted_fib_byte_is_a_mismatch_at_its_offset() {
    let addr = serve(fib(), Fault::CorruptEvery(10));
    let mut c = config(addr, Service::Fib);
    c.conns = 1;
    c.requests = Some(100);
    let r = run(&c);
    assert_eq!(
        (r.requests_ok, r.errors.mismatch, r.errors_total),
        (9, 1, 1)
    );
    let m = r.first_mismatch.clone().expect("first mismatch");
    assert_eq!(
        (m.conn, m.request, m.offset),
        (0, 9, 27),
        "55\\n is 3 bytes"
    );
    assert_eq!((m.expected, m.got), (Some(b'5'), b'#'));
    // The server's line: "55" with its first byte replaced.
    assert_eq!((m.received.as_deref(), m.received_offset), (Some("#5"), 27));
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn corrupted_echo_byte_is_a_mismatch_at_its_offset() {
    let addr = serve(echo(), Fault::CorruptEvery(5));
    let mut c = config(addr, Service::Echo);
    c.conns = 1;
    c.requests = Some(50);
    let r = run(&c);
    assert_eq!(
        (r.requests_ok, r.errors.mismatch, r.errors_total),
        (4, 1, 1)
    );
    let m = r.first_mismatch.expect("first mismatch");
    assert_eq!((m.request, m.offset, m.got), (4, 4 * 74 + 37, b'#'));
    // The server's reply around it, from its prefix (wherever the server's reads
    // split the stream), with the bad byte where it was.
    let line = m.received.clone().expect("the server's line");
    assert!(line.starts_with("Received: "), "{line}");
    assert!(
        m.received_offset >= 4 * 74 && m.received_offset < m.offset,
        "{m:?}"
    );
    assert_eq!(
        line.as_bytes()[(m.offset - m.received_offset) as usize],
        b'#',
        "{line}"
    );
}

#[test]
fn missing_newline_is_a_mismatch_when_the_next_reply_comes() {
    let addr = serve(fib(), Fault::MissingNewline(3));
    let mut c = config(addr, Service::Fib);
    c.conns = 1;
    c.pipeline = 2;
    c.requests = Some(20);
    let r = run(&c);
    assert_eq!(
        (r.requests_ok, r.errors.mismatch, r.errors_total),
        (2, 1, 1)
    );
    let m = r.first_mismatch.expect("first mismatch");
    assert_eq!(
        (m.request, m.offset, m.expected, m.got),
        (2, 8, Some(b'\n'), b'5')
    );
}

#[test]
fn missing_newline_is_a_timeout_when_nothing_follows() {
    let addr = serve(fib(), Fault::MissingNewline(3));
    let mut c = config(addr, Service::Fib);
    c.conns = 1;
    c.requests = Some(20);
    // Replies 1 and 2 must beat it: generous, so only the missing newline times out.
    c.timeout = Duration::from_secs(2);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors.timeout, r.errors_total), (2, 1, 1));
}

#[test]
fn early_close_is_closed_early() {
    let addr = serve(echo(), Fault::CloseAfter(5));
    let mut c = config(addr, Service::Echo);
    c.conns = 2;
    c.requests = Some(100);
    let r = run(&c);
    assert_eq!(
        (r.requests_ok, r.errors.closed_early, r.errors_total),
        (10, 2, 2)
    );
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn silent_server_is_a_timeout() {
    let addr = serve(fib(), Fault::Silent);
    let mut c = config(addr, Service::Fib);
    c.conns = 3;
    c.requests = Some(10);
    c.timeout = Duration::from_secs(1);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors.timeout, r.errors_total), (0, 3, 3));
}

#[test]
fn nothing_listening_is_refused() {
    let mut c = config(dead_port(), Service::Echo);
    c.conns = 3;
    c.requests = Some(10);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors.refused, r.errors_total), (0, 3, 3));
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn mix_reports_heavy_and_light_apart() {
    let addr = serve(fib(), Fault::None);
    let mut c = config(addr, Service::Fib);
    c.conns = 3;
    c.n = 1;
    c.heavy = Some(22);
    c.duration = Some(Duration::from_millis(400));
    let r = run(&c);
    assert_eq!(r.errors_total, 0, "{r:?}");
    let heavy = r.heavy.expect("heavy report");
    assert_eq!(heavy.n, 22);
    assert!(heavy.requests_ok >= 1 && r.requests_ok >= 1, "{heavy:?}");
    assert_eq!(
        r.bytes_received,
        r.requests_ok * 2 + heavy.requests_ok * "17711\n".len() as u64
    );
}

#[test]
fn open_loop_counts_are_exact() {
    let addr = serve(echo(), Fault::None);
    let mut c = config(addr, Service::Echo);
    c.conns = 3;
    c.rate = Some(3000.0);
    c.requests = Some(300);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (300, 0), "{r:?}");
    assert_eq!(r.mode, "open");
    // Not a speed check: request k is due k/rate after the start whatever the
    // machine, and the run ends only once the last one is answered.
    let last_due = (300 - 1) as f64 / 3000.0;
    assert!(
        r.elapsed_secs >= last_due,
        "the schedule was not followed: {} s for requests due over {last_due} s",
        r.elapsed_secs
    );
}

#[test]
fn open_loop_latency_counts_from_the_intended_time() {
    // One connection stalls once. Its requests that fall due during the stall wait
    // behind it (pipeline 1); counted from when they were due, those due in the
    // stall's first half each waited over half of it: about 25 of the 400 at 500/s
    // per connection, which puts the p99 (the top 4) there. Counted from when they
    // were finally sent (coordinated omission), only the stalled request would, and
    // the p99 would be an ordinary round trip.
    let (addr, seen) = serve_seen(echo(), Fault::StallOnce { reply: 20, ms: 100 });
    let mut c = config(addr, Service::Echo);
    c.conns = 2;
    c.rate = Some(1000.0);
    c.requests = Some(400);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (400, 0), "{r:?}");
    let stall_us = seen.stall_ns.load(std::sync::atomic::Ordering::SeqCst) as f64 / 1e3;
    assert!(
        stall_us > 0.0,
        "the stall happened and ended during the run"
    );
    assert!(
        r.latency_us.p99 >= stall_us / 2.0,
        "p99 {} us against a stall of {stall_us} us: {:?}",
        r.latency_us.p99,
        r.latency_us
    );
}

/// Every request sent is accounted for: verified, lost with its connection, or still
/// in flight at the end.
fn assert_accounted(r: &LoadReport) {
    assert_eq!(
        r.requests_sent,
        r.requests_ok + r.requests_failed + r.requests_unfinished,
        "{r:?}"
    );
}

#[test]
fn requests_in_flight_on_a_failed_connection_are_counted() {
    // The server answers 5 requests per connection, then closes: each connection
    // has sent 9 or more by then (its pipeline of 4 refilled as replies came), and
    // every one not answered is lost with it.
    let addr = serve(fib(), Fault::CloseAfter(5));
    let mut c = config(addr, Service::Fib);
    c.conns = 2;
    c.pipeline = 4;
    c.requests = Some(100);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors.closed_early), (10, 2));
    assert!(r.requests_failed >= 8, "{r:?}");
    assert_eq!(r.requests_unfinished, 0);
    assert_accounted(&r);
}

#[test]
fn requests_in_flight_when_the_duration_ends_are_unfinished() {
    // A silent server never answers; the run ends by --duration, long before the
    // timeout: every pipelined request is still in flight, none is an error.
    let addr = serve(fib(), Fault::Silent);
    let mut c = config(addr, Service::Fib);
    c.conns = 2;
    c.pipeline = 3;
    c.duration = Some(Duration::from_millis(200));
    c.timeout = Duration::from_secs(60);
    let r = run(&c);
    assert_eq!((r.requests_ok, r.errors_total), (0, 0));
    assert_eq!((r.requests_sent, r.requests_unfinished), (6, 6));
    assert_accounted(&r);
}

#[test]
fn a_clean_run_sends_exactly_what_was_asked() {
    let addr = serve(echo(), Fault::None);
    let mut c = config(addr, Service::Echo);
    c.conns = 3;
    c.pipeline = 5;
    c.threads = 2;
    c.requests = Some(1000);
    let r = run(&c);
    assert_eq!((r.requests_sent, r.requests_ok), (1000, 1000));
    assert_accounted(&r);
}
