//! A minimal epoll echo server speaking the talk's protocol (`Received: ` + each chunk
//! read), used to measure `concur load` against a server that wastes nothing: one
//! thread, edge-triggered mio, one reusable buffer holding the prefix and the data so
//! each reply is one `write`. Not a concur server model; a yardstick.
//!
//! ```text
//! cargo run --release --example echo_epoll -- 127.0.0.1:25010
//! ```

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

const LISTENER: Token = Token(usize::MAX);
const PREFIX: &[u8] = b"Received: ";

struct Conn {
    stream: TcpStream,
    /// Reply bytes the socket did not take yet.
    pending: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:25010".into());
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; PREFIX.len() + 64 * 1024];
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let slot = conns
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(conns.len());
                    poll.registry().register(
                        &mut stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let conn = Some(Conn {
                        stream,
                        pending: Vec::new(),
                    });
                    if slot == conns.len() {
                        conns.push(conn);
                    } else {
                        conns[slot] = conn;
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            if serve(conn, &mut buf).is_err() {
                let _ = poll.registry().deregister(&mut conn.stream);
                conns[i] = None;
            }
        }
    }
}

/// Flush what is pending, then echo everything readable; Err closes the connection.
fn serve(conn: &mut Conn, buf: &mut [u8]) -> std::io::Result<()> {
    if !conn.pending.is_empty() {
        let n = match conn.stream.write(&conn.pending) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        conn.pending.drain(..n);
        if !conn.pending.is_empty() {
            return Ok(());
        }
    }
    loop {
        let n = match conn.stream.read(&mut buf[PREFIX.len()..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let reply = &buf[..PREFIX.len() + n];
        let sent = match conn.stream.write(reply) {
            Ok(sent) => sent,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < reply.len() {
            conn.pending.extend_from_slice(&reply[sent..]);
            return Ok(());
        }
        if n < buf.len() - PREFIX.len() {
            return Ok(());
        }
    }
}
