//! Test servers for the load and hold tests: small std::net thread-per-connection
//! servers on 127.0.0.1:0, one correct (built on `concur::protocol`) and several
//! deliberately faulty, each fault counted in replies on one connection.
#![allow(dead_code)]

use concur::protocol::{Flow, ServiceSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

/// Start a server; it runs until the test process ends.
pub fn serve(spec: ServiceSpec, fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new((AtomicU64::new(0), AtomicBool::new(false)));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let spec = spec.clone();
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, spec, fault, &shared);
            });
        }
    });
    addr
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
    shared: &(AtomicU64, AtomicBool),
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
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
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
                    let total = shared.0.fetch_add(1, Ordering::SeqCst) + 1;
                    if total >= reply && !shared.1.swap(true, Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                }
                _ => {}
            }
            start = end;
        }
        if let Some(at) = drop_at {
            out.remove(at);
        }
        if matches!(fault, Fault::Silent) {
            continue;
        }
        stream.write_all(&out)?;
        if close || flow == Flow::Close {
            return Ok(());
        }
    }
}
