//! Test servers for the load and hold tests: small std::net thread-per-connection
//! servers on 127.0.0.1:0, one correct (built on `concur::protocol`) and several
//! deliberately faulty, each fault counted in replies on one connection; and a
//! gated fib server ([`serve_gated`]) that records how many requests were ever
//! outstanding at once.
#![allow(dead_code)]

use concur::protocol::{Flow, ServiceSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a test server misbehaves. Reply numbers count from 1 on each connection; a
/// fib reply is a line, an echo reply is what one read produced.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    None,
    /// Replace one byte (the first of a fib line, the middle of an echo reply) with
    /// `#` in every n-th reply.
    CorruptEvery(u64),
    /// The n-th fib reply loses its newline.
    MissingNewline(u64),
    /// Close the connection after n replies.
    CloseAfter(u64),
    /// Read everything, answer nothing.
    Silent,
    /// The connection whose data arrives first (over all connections) is never
    /// answered; every other one is.
    SilentOnce,
    /// Before the n-th reply over all connections, sleep this long (once).
    StallOnce {
        reply: u64,
        ms: u64,
    },
    /// Read at most this many bytes per recv (so the echo prefix lands every k bytes).
    ReadChunk(usize),
}

pub fn echo() -> ServiceSpec {
    ServiceSpec::Echo {
        prefix: b"Received: ".to_vec(),
    }
}

pub fn fib() -> ServiceSpec {
    ServiceSpec::Fib { max_n: 40 }
}

/// What a test server saw, shared by all its connections.
#[derive(Debug, Default)]
pub struct Seen {
    /// Replies so far over all connections (counted by [`Fault::StallOnce`]).
    replies: AtomicU64,
    /// Whether the one stall has happened.
    stalled: AtomicBool,
    /// How long the stall really lasted, in nanoseconds (0 until it ends).
    pub stall_ns: AtomicU64,
    /// Whether [`Fault::SilentOnce`] has picked its connection.
    silenced: AtomicBool,
    /// Connections accepted, by the client's address.
    pub peers: Mutex<std::collections::BTreeMap<std::net::IpAddr, u64>>,
}

/// Start a server; it runs until the test process ends.
pub fn serve(spec: ServiceSpec, fault: Fault) -> SocketAddr {
    serve_seen(spec, fault).0
}

/// [`serve`], also returning what the server saw.
pub fn serve_seen(spec: ServiceSpec, fault: Fault) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Ok(peer) = stream.peer_addr() {
                *shared.peers.lock().unwrap().entry(peer.ip()).or_default() += 1;
            }
            let spec = spec.clone();
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, spec, fault, &shared);
            });
        }
    });
    (addr, seen)
}

/// A port with nothing listening on it.
pub fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn connection(
    mut stream: TcpStream,
    spec: ServiceSpec,
    fault: Fault,
    shared: &Seen,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let is_fib = matches!(spec, ServiceSpec::Fib { .. });
    let mut session = spec.session();
    let chunk = match fault {
        Fault::ReadChunk(k) => k,
        _ => 16 * 1024,
    };
    let mut buf = vec![0u8; chunk];
    let mut replies = 0u64;
    let mut silent = matches!(fault, Fault::Silent);
    let mut first = true;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if first && matches!(fault, Fault::SilentOnce) {
            silent = !shared.silenced.swap(true, Ordering::SeqCst);
        }
        first = false;
        let mut out = Vec::new();
        let flow = session.feed(&buf[..n], &mut out);
        // Where each reply ends in `out` (exclusive).
        let ends: Vec<usize> = if is_fib {
            out.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .collect()
        } else if out.is_empty() {
            Vec::new()
        } else {
            vec![out.len()]
        };
        let mut close = false;
        let mut drop_at = None;
        let mut start = 0;
        for end in ends {
            replies += 1;
            match fault {
                Fault::CorruptEvery(k) if replies.is_multiple_of(k) => {
                    let at = if is_fib { start } else { (start + end) / 2 };
                    out[at] = b'#';
                }
                Fault::MissingNewline(k) if replies == k => drop_at = Some(end - 1),
                Fault::CloseAfter(k) if replies == k => {
                    out.truncate(end);
                    close = true;
                    break;
                }
                Fault::StallOnce { reply, ms } => {
                    let total = shared.replies.fetch_add(1, Ordering::SeqCst) + 1;
                    if total >= reply && !shared.stalled.swap(true, Ordering::SeqCst) {
                        // The fault itself, not synchronisation: this connection
                        // stops answering for a while.
                        let t = Instant::now();
                        std::thread::sleep(Duration::from_millis(ms));
                        let ns = t.elapsed().as_nanos() as u64;
                        shared.stall_ns.store(ns, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
            start = end;
        }
        if let Some(at) = drop_at {
            out.remove(at);
        }
        if silent {
            continue;
        }
        stream.write_all(&out)?;
        if close || flow == Flow::Close {
            return Ok(());
        }
    }
}

/// A fib server that answers in batches of `k`: request number `t` (counted over
/// all connections, from 0) is answered only once `min(total, (t / k + 1) * k)`
/// requests have arrived. A client that keeps `k` requests in flight therefore
/// makes exactly `k` outstanding at once (the batch fills, then is answered); one
/// that sends more makes more outstanding, and one that never has `k` in flight
/// waits for ever (its own timeout ends that). Every count is kept for the test.
pub struct Gate {
    k: u64,
    total: u64,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone)]
pub struct GateState {
    /// Requests arrived so far, over all connections.
    pub arrivals: u64,
    /// Requests arrived and not yet answered.
    pub outstanding: u64,
    /// The most ever outstanding at once.
    pub max_outstanding: u64,
    /// Requests each finished connection made, in the order they finished.
    pub requests_per_conn: Vec<u64>,
}

/// Waits in the gated server are bounded by this, so a broken client cannot hang a
/// test: a guard against hangs, never part of a verdict.
const GATE_GUARD: Duration = Duration::from_secs(60);

impl Gate {
    /// Wait (bounded) until `conns` connections have finished; the state then.
    pub fn finished(&self, conns: usize) -> GateState {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, GATE_GUARD, |s| s.requests_per_conn.len() < conns)
            .unwrap();
        state.clone()
    }

    fn arrive(&self, requests: u64) {
        let mut s = self.state.lock().unwrap();
        let last = s.arrivals + requests - 1;
        s.arrivals += requests;
        s.outstanding += requests;
        s.max_outstanding = s.max_outstanding.max(s.outstanding);
        self.changed.notify_all();
        let open_at = self.total.min((last / self.k + 1) * self.k);
        let _ = self
            .changed
            .wait_timeout_while(s, GATE_GUARD, |s| s.arrivals < open_at)
            .unwrap();
    }

    fn answered(&self, requests: u64) {
        self.state.lock().unwrap().outstanding -= requests;
    }

    fn closed(&self, requests: u64) {
        self.state.lock().unwrap().requests_per_conn.push(requests);
        self.changed.notify_all();
    }
}

/// Start a gated fib server (see [`Gate`]) expecting `total` requests in all.
pub fn serve_gated(k: u64, total: u64) -> (SocketAddr, Arc<Gate>) {
    assert!(k >= 1 && total >= 1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Gate {
        k,
        total,
        state: Mutex::new(GateState::default()),
        changed: Condvar::new(),
    });
    let shared = gate.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let gate = shared.clone();
            std::thread::spawn(move || gated_connection(stream, &gate));
        }
    });
    (addr, gate)
}

fn gated_connection(mut stream: TcpStream, gate: &Gate) {
    let mut session = fib().session();
    let mut buf = vec![0u8; 4096];
    let mut requests = 0;
    let mut out = Vec::new();
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        out.clear();
        session.feed(&buf[..n], &mut out);
        if lines > 0 {
            requests += lines;
            gate.arrive(lines);
            // No longer outstanding before the reply is written: once it is, the
            // client may send its next request, which must not find this one
            // still counted.
            gate.answered(lines);
        }
        if stream.write_all(&out).is_err() {
            break;
        }
    }
    gate.closed(requests);
}

/// The talk's echo server (`Received: ` + each chunk read), written plainly with a
/// thread per client, counting the replies it has written; returns its address.
pub fn counting_echo() -> (String, Arc<AtomicU64>) {
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

/// Start the concur binary with `args`, stdout and stderr piped, stdin closed.
pub fn spawn(args: &[&str]) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concur")
}
