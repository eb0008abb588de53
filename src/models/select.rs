//! `select`: one thread, a select(2) readiness loop, the talk's option 3.
//!
//! ```python
//! while inputs:
//!     readable, writable, exceptional = select.select(inputs, outputs, inputs, timeout)
//!     for s in readable:
//!         if s is listen_sock: accept, add to inputs
//!         else: data = s.recv(1024); queue the answer in msg_out[s]; add s to outputs
//!     for s in writable:
//!         send from msg_out[s]
//! ```
//!
//! Each turn builds the two sets (`inputs`, `outputs`): the shutdown pipe and the
//! listener, each client that [`Conn::wants_read`] (its unsent replies are under the
//! bound), each client that [`Conn::wants_write`]. Then one select(2) call waits for
//! any of them, and the loop reads, feeds the protocol, and writes what the sockets
//! take without blocking. The talk's "sloppy" recv is fixed by the protocol, which
//! keeps partial requests.
//!
//! fib is computed inline, on the loop's only thread: while one client's fib(40)
//! runs, no other client is read or written. That is the talk's lesson about event
//! loops and CPU-bound work. `--offload` hands it to a worker pool instead
//! ([`crate::serve::offload`]); the pool's eventfd joins the select set.
//!
//! Cost: per turn, select copies and scans three bitmaps up to the highest fd, and
//! this loop walks every client: O(clients) per wake-up. Ceiling: select(2) cannot
//! watch a descriptor >= FD_SETSIZE (1024), so about 1000 clients; a client whose
//! descriptor is past that is refused with a log line (passing it to FD_SET would
//! corrupt memory). "Select scales to monitoring dozens of sockets."

use crate::serve::accept::{Accepted, ConnToken, Gate, try_accept};
use crate::serve::conn::{Conn, READ_SIZE, Step};
use crate::serve::offload::Mailbox;
use crate::serve::{ServeConfig, Shutdown, log_closed, log_io_error, log_open};
use anyhow::Context;
use nix::sys::select::{FD_SETSIZE, FdSet, select};
use nix::sys::time::TimeVal;
use std::collections::HashMap;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

/// Clients taken per turn, so a flood of connections cannot starve the others.
const ACCEPTS_PER_TURN: usize = 64;

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    conn: Conn,
    _token: ConnToken,
}

pub fn run(listener: TcpListener, cfg: &ServeConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let gate = Gate::new(cfg.max_conns);
    let pool = crate::serve::offload_pool(cfg)?;
    let mailbox = match pool {
        Some(_) => Some(Mailbox::new().context("creating the offload eventfd")?),
        None => None,
    };
    let mut clients: HashMap<RawFd, Client> = HashMap::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut accept_paused_until: Option<Instant> = None;
    let mut stopping_at: Option<Instant> = None; // end of the grace period
    loop {
        // Build the sets and wait.
        let now = Instant::now();
        let accepting = stopping_at.is_none() && accept_paused_until.is_none_or(|t| now >= t);
        let wake = clients
            .values()
            .filter_map(|c| c.conn.deadline())
            .chain(accept_paused_until)
            .chain(stopping_at)
            .min();
        let mut watch = Vec::new();
        if stopping_at.is_none() {
            watch.push(shutdown.fd());
        }
        if accepting {
            watch.push(listener.as_fd());
        }
        if let Some(m) = &mailbox {
            watch.push(m.fd());
        }
        let (readable, writable) = wait(&watch, &clients, wake)?;
        let now = Instant::now();

        if is_in(&readable, shutdown.raw_fd()) && stopping_at.is_none() {
            stopping_at = Some(now + cfg.grace);
            clients.values_mut().for_each(|c| c.conn.stop());
        }
        // Finished offloaded jobs: their replies join the unsent buffers, and the
        // next turn's set of writable sockets.
        if let Some(m) = &mailbox
            && is_in(&readable, m.fd().as_raw_fd())
        {
            for d in m.take() {
                if let Some(c) = clients.get_mut(&(d.key as RawFd)) {
                    c.conn.completed(d.id, d.reply);
                }
            }
        }
        if stopping_at.is_none() && is_in(&readable, listener.as_raw_fd()) {
            accept_paused_until = None;
            for _ in 0..ACCEPTS_PER_TURN {
                match try_accept(&listener, &gate) {
                    Accepted::Client(c) if c.stream.as_raw_fd() >= FD_SETSIZE as RawFd => {
                        tracing::warn!(
                            "refused {}: descriptor {} >= FD_SETSIZE ({FD_SETSIZE}), select(2) cannot watch it",
                            c.addr,
                            c.stream.as_raw_fd()
                        );
                    }
                    Accepted::Client(c) => {
                        if let Err(e) = c.stream.set_nonblocking(true) {
                            log_io_error(&c.addr, &e);
                            continue;
                        }
                        log_open(&c.addr);
                        let fd = c.stream.as_raw_fd();
                        let offload = pool
                            .as_ref()
                            .zip(mailbox.as_ref())
                            .map(|(p, m)| p.handle(m, fd as usize));
                        let conn =
                            Conn::with_offload(cfg.service.session(), cfg.idle_timeout, offload);
                        let client = Client {
                            stream: c.stream,
                            addr: c.addr,
                            conn,
                            _token: c.token,
                        };
                        clients.insert(fd, client);
                    }
                    Accepted::Nothing { again: true } => {}
                    Accepted::Nothing { again: false } => break,
                    Accepted::Backoff(d) => {
                        accept_paused_until = Some(now + d);
                        break;
                    }
                }
            }
        }

        // Read, feed the protocol, write; then let each connection say what is next.
        let mut gone = Vec::new();
        for (fd, c) in clients.iter_mut() {
            let (r, w) = (is_in(&readable, *fd), is_in(&writable, *fd));
            let step = c.conn.pump(&c.stream, r, w, &mut buf, now);
            let step = match step {
                Ok(Step::ShutdownWrite) => c.stream.shutdown(Direction::Write).map(|()| Step::Wait),
                other => other,
            };
            match step {
                Ok(Step::Wait | Step::ShutdownWrite) => {}
                Ok(Step::Close) => gone.push(*fd),
                Err(e) => {
                    log_io_error(&c.addr, &e);
                    gone.push(*fd);
                }
            }
        }
        for fd in gone {
            if let Some(c) = clients.remove(&fd) {
                log_closed(&c.addr);
            }
        }

        if let Some(end) = stopping_at
            && (clients.is_empty() || Instant::now() >= end)
        {
            return Ok(());
        }
    }
}

/// Whether `fd` is in a sorted list of ready descriptors.
fn is_in(ready: &[RawFd], fd: RawFd) -> bool {
    ready.binary_search(&fd).is_ok()
}

/// One select(2) call on `watch` (shutdown pipe, listener) and the clients'
/// descriptors: returns the readable and the writable descriptors, sorted.
fn wait(
    watch: &[BorrowedFd<'_>],
    clients: &HashMap<RawFd, Client>,
    wake: Option<Instant>,
) -> anyhow::Result<(Vec<RawFd>, Vec<RawFd>)> {
    let mut inputs = FdSet::new();
    let mut outputs = FdSet::new();
    for fd in watch {
        inputs.insert(*fd);
    }
    for c in clients.values() {
        if c.conn.wants_read() {
            inputs.insert(c.stream.as_fd());
        }
        if c.conn.wants_write() {
            outputs.insert(c.stream.as_fd());
        }
    }
    let mut timeout = wake.map(|w| {
        let left = w.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
        TimeVal::new(left.as_secs() as _, left.subsec_micros() as _)
    });
    match select(None, &mut inputs, &mut outputs, None, timeout.as_mut()) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok((Vec::new(), Vec::new())),
        Err(e) => anyhow::bail!("select: {e}"),
    }
    let readable = inputs.fds(None).map(|fd| fd.as_raw_fd()).collect();
    let writable = outputs.fds(None).map(|fd| fd.as_raw_fd()).collect();
    Ok((readable, writable))
}
