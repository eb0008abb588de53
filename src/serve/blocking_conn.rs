//! One client served with blocking calls: the talk's `echo_handler`, made robust.
//! The blocking, threads and processes models all run exactly this; they differ
//! only in who calls it (the accept loop itself, a new thread, a forked child).
//!
//! ```text
//! while True:
//!     data = client.recv(10000)      # here: poll(client, shutdown pipe), then read
//!     if not data: break              # here: session.eof(), send what is owed
//!     client.sendall(reply(data))     # here: session.feed(), write_all
//! ```
//!
//! - Memory is bounded without a buffer limit: the replies to one read are written in
//!   full before the next read. A client that never reads fills its socket buffers,
//!   write blocks, and the server stops reading from it.
//! - Idle timeout: poll(2) waits at most `--idle-timeout` for input, and the same
//!   bound applies to a write stuck on a client that does not read (SO_SNDTIMEO).
//! - Shutdown: poll(2) also watches the shutdown pipe. Replies to everything read so
//!   far have already been sent, so the loop stops reading and closes gracefully.
//! - Closing: after `ERR request too long` or on shutdown the client may still be
//!   sending; closing a socket with unread input makes the kernel send RST, which
//!   can destroy the reply before the client reads it. [`linger_close`] sends FIN
//!   and discards input briefly first.

use super::{ServeConfig, Shutdown, accept::Client, is_routine, log_closed, log_open};
use crate::protocol::{Flow, Session};
use std::io::{self, Read, Write};
use std::net::{Shutdown as Direction, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Bytes taken per read (the talk reads 10000).
pub const READ_SIZE: usize = 16 * 1024;

/// How long a closing connection discards input while its FIN reaches the client.
pub const LINGER: Duration = Duration::from_secs(2);

/// Serve one client to the end, logging its arrival and departure. Never fails:
/// resets and broken pipes are routine (logged at debug).
pub fn serve_client(client: Client, cfg: &ServeConfig, shutdown: &Shutdown) {
    log_open(&client.addr);
    match serve_stream(&client.stream, cfg.service.session(), cfg, shutdown) {
        Ok(()) => {}
        Err(e) if is_routine(&e) => tracing::debug!("{}: {e}", client.addr),
        Err(e) => tracing::warn!("{}: {e}", client.addr),
    }
    log_closed(&client.addr);
}

/// The connection loop proper.
pub fn serve_stream(
    stream: &TcpStream,
    mut session: Session,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
) -> io::Result<()> {
    stream.set_write_timeout(cfg.idle_timeout)?;
    let mut stream_ref = stream;
    let mut buf = vec![0u8; READ_SIZE];
    let mut out = Vec::new();
    loop {
        let ready =
            super::shutdown::poll_readable(&[stream.as_fd(), shutdown.fd()], cfg.idle_timeout);
        if ready[1] {
            return linger_close(stream, Instant::now() + cfg.grace.min(LINGER));
        }
        if !ready[0] {
            tracing::info!("closing an idle connection (--idle-timeout)");
            return Ok(());
        }
        let n = match stream_ref.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.clear();
        if n == 0 {
            session.eof(&mut out);
            return stream_ref.write_all(&out);
        }
        let flow = session.feed(&buf[..n], &mut out);
        stream_ref.write_all(&out)?;
        if flow == Flow::Close {
            return linger_close(stream, Instant::now() + LINGER);
        }
    }
}

/// Close gracefully: send FIN after everything written, then read and discard what
/// the client still sends until it closes or `deadline` passes.
pub fn linger_close(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    stream.shutdown(Direction::Write)?;
    let mut sink = [0u8; 4096];
    let mut stream = stream;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
