//! One client served with blocking calls: the talk's `echo_handler`, made robust.
//! The blocking, threads and processes models all run exactly this; they differ
//! only in who calls it (the accept loop itself, a new thread, a forked child).
//!
//! ```text
//! while True:
//!     data = client.recv(10000)      # here: poll(client, shutdown pipe), then read
//!     if not data: break              # here: session.eof(), send what is owed
//!     client.sendall(reply(data))     # here: session.feed(), send_all
//! ```
//!
//! - Memory is bounded without a buffer limit: the replies to one read are written in
//!   full before the next read. A client that never reads fills its socket buffers,
//!   [`send_all`] waits for room, and the server stops reading from it.
//! - Idle timeout: poll(2) waits at most `--idle-timeout` for input, and the same
//!   bound applies to a write stuck on a client that does not read ([`send_all`]).
//!   A signal handled meanwhile (EINTR) does not cut the wait short: only time
//!   passing without input closes an idle connection ([`poll`]).
//! - Shutdown: poll(2) also watches the shutdown pipe. Replies to everything read so
//!   far have already been sent, so the loop stops reading and closes gracefully.
//! - Closing: after `ERR request too long` or on shutdown the client may still be
//!   sending; closing a socket with unread input makes the kernel send RST, which
//!   can destroy the reply before the client reads it. [`linger_close`] sends FIN
//!   and discards input briefly first.

use super::shutdown::{poll, poll_readable};
use super::{
    LINGER, READ_SIZE, ServeConfig, Shutdown, accept::Client, log_closed, log_io_error, log_open,
};
use crate::protocol::{Flow, Session};
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use std::io::{self, Read};
use std::net::{Shutdown as Direction, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

/// Serve one client to the end, logging its arrival and departure. Never fails:
/// resets and broken pipes are routine (logged at debug).
pub fn serve_client(client: Client, cfg: &ServeConfig, shutdown: &Shutdown) {
    serve_connection(&client.stream, &client.addr, cfg, shutdown);
}

/// [`serve_client`] for a caller that keeps the client's `--max-conns` token
/// elsewhere (`processes`: the parent holds it while a child serves).
pub fn serve_connection(
    stream: &TcpStream,
    addr: &SocketAddr,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
) {
    log_open(addr);
    if let Err(e) = serve_stream(stream, cfg.service.session(), cfg, shutdown) {
        log_io_error(addr, &e);
    }
    log_closed(addr);
}

/// The connection loop proper.
pub fn serve_stream(
    stream: &TcpStream,
    mut session: Session,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
) -> io::Result<()> {
    let mut stream_ref = stream;
    let mut buf = vec![0u8; READ_SIZE];
    let mut out = Vec::new();
    loop {
        let ready = poll_readable(&[stream.as_fd(), shutdown.fd()], cfg.idle_timeout);
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
            return send_all(stream, &out, cfg, shutdown);
        }
        let flow = session.feed(&buf[..n], &mut out);
        send_all(stream, &out, cfg, shutdown)?;
        if flow == Flow::Close {
            return linger_close(stream, Instant::now() + LINGER);
        }
    }
}

/// `sendall`, but never stuck for good: each wait for room in the socket buffer is
/// bounded by the idle timeout, and once shutdown is requested by the grace period.
/// (A plain blocking write to a client that never reads would block forever and
/// keep the server from exiting.)
pub fn send_all(
    stream: &TcpStream,
    mut data: &[u8],
    cfg: &ServeConfig,
    shutdown: &Shutdown,
) -> io::Result<()> {
    let fd = stream.as_fd();
    let mut stop_by: Option<Instant> = None;
    while !data.is_empty() {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match nix::sys::socket::send(fd.as_raw_fd(), data, flags) {
            Ok(n) => {
                data = &data[n..];
                continue;
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let left = stop_by.map(|t| t.saturating_duration_since(Instant::now()));
        let limit = match (cfg.idle_timeout, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut watch = vec![(fd, libc::POLLOUT)];
        if stop_by.is_none() {
            watch.push((shutdown.fd(), libc::POLLIN));
        }
        let ready = poll(&watch, limit);
        if ready.get(1) == Some(&true) {
            stop_by = Some(Instant::now() + cfg.grace);
        } else if !ready[0] {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client not reading its replies",
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServiceSpec;
    use crate::serve::GRACE;
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    /// Guard against a hang; never part of a verdict.
    const LIMIT: Duration = Duration::from_secs(20);

    /// Wait (bounded by [`LIMIT`]) until `what` holds.
    fn wait_until(label: &str, what: impl Fn() -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !what() {
            assert!(Instant::now() < deadline, "never happened: {label}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether thread `tid` of this process is blocked in poll(2) (ppoll on
    /// architectures without poll), from /proc.
    fn in_poll(tid: libc::pid_t) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
            return false;
        };
        let nr = text.split_whitespace().next().and_then(|n| n.parse().ok());
        #[cfg(target_arch = "x86_64")]
        if nr == Some(libc::SYS_poll) {
            return true;
        }
        nr == Some(libc::SYS_ppoll)
    }

    /// A signal handled while the loop waits for input is not an idle timeout: the
    /// connection is still served afterwards. (No idle timeout is set at all, so
    /// only the client may end it.)
    #[test]
    fn a_handled_signal_is_not_an_idle_timeout() {
        let handled = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR1, handled.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(LIMIT)).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let (tid_tx, tid) = mpsc::channel();
        let server = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let cfg = ServeConfig {
                service: ServiceSpec::Echo {
                    prefix: b"Received: ".to_vec(),
                },
                workers: 1,
                max_conns: 1,
                idle_timeout: None,
                grace: GRACE,
                offload: false,
                fork: false,
            };
            let shutdown = Shutdown::unhooked().unwrap();
            serve_stream(&stream, cfg.service.session(), &cfg, &shutdown)
        });
        let tid = tid.recv().unwrap();
        wait_until("the server waits in poll", || in_poll(tid));
        // SAFETY: the thread is alive (blocked in poll) and SIGUSR1 has a handler.
        assert_eq!(
            unsafe { libc::pthread_kill(server.as_pthread_t(), libc::SIGUSR1) },
            0
        );
        wait_until("the signal is handled", || handled.load(Ordering::SeqCst));

        client.write_all(b"ping").unwrap();
        let mut reply = [0u8; 14];
        client
            .read_exact(&mut reply)
            .expect("the connection outlives the signal");
        assert_eq!(&reply, b"Received: ping");
        client.shutdown(Direction::Write).unwrap();
        server.join().unwrap().unwrap();
    }
}
