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
//! Accepting, `--max-conns`, the EMFILE back-off, stopping with a grace period and
//! the idle deadlines are the [`Lifecycle`] every event loop shares; this walk over
//! every client each turn is also where their deadlines are checked.
//!
//! Cost: per turn, select copies and scans three bitmaps up to the highest fd, and
//! this loop walks every client: O(clients) per wake-up. Ceiling: select(2) cannot
//! watch a descriptor >= FD_SETSIZE (1024), so about 1000 clients; a client whose
//! descriptor is past that is refused with a log line (passing it to FD_SET would
//! corrupt memory). "Select scales to monitoring dozens of sockets."

use crate::serve::accept::{ConnToken, Gate};
use crate::serve::conn::{Conn, READ_SIZE, Step};
use crate::serve::lifecycle::{Lifecycle, apply};
use crate::serve::{Ready, ServeConfig, Shutdown, log_closed, log_io_error, log_open};
use nix::sys::select::{FD_SETSIZE, FdSet, select};
use nix::sys::time::TimeVal;
use slab::Slab;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    conn: Conn,
    _token: ConnToken,
}

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let pool = crate::serve::offload_pool(cfg)?;
    let mut life = Lifecycle::new(cfg, Gate::new(cfg.max_conns), pool.as_ref())?;
    let mut clients: Slab<Client> = Slab::new();
    let mut buf = vec![0u8; READ_SIZE];
    ready.announce()?;
    loop {
        // Build the sets and wait.
        let now = Instant::now();
        let mut watch = Vec::new();
        if !life.stopping() {
            watch.push(shutdown.fd());
        }
        if life.accepting(now) {
            watch.push(listener.as_fd());
        }
        if let Some(m) = life.mailbox() {
            watch.push(m.fd());
        }
        let timeout = life.timeout(!clients.is_empty(), now);
        let (readable, writable) = wait(&watch, &clients, timeout)?;
        let now = Instant::now();

        if is_in(&readable, shutdown.raw_fd()) && life.stop(now) {
            clients.iter_mut().for_each(|(_, c)| c.conn.stop());
        }
        // Finished offloaded jobs: their replies join the unsent buffers, and the
        // next turn's set of writable sockets.
        for d in life.finished_jobs() {
            if let Some(c) = clients.get_mut(d.key) {
                c.conn.completed(d.id, d.reply);
            }
        }
        if is_in(&readable, listener.as_raw_fd()) {
            let mut admitted = Vec::new();
            life.accept_from(&listener, now, |c| admitted.push(c));
            for c in admitted {
                if c.stream.as_raw_fd() >= FD_SETSIZE as RawFd {
                    tracing::warn!(
                        "refused {}: descriptor {} >= FD_SETSIZE ({FD_SETSIZE}), select(2) cannot watch it",
                        c.addr,
                        c.stream.as_raw_fd()
                    );
                    continue;
                }
                if let Err(e) = c.stream.set_nonblocking(true) {
                    log_io_error(&c.addr, &e);
                    continue;
                }
                log_open(&c.addr);
                let key = clients.vacant_key();
                clients.insert(Client {
                    stream: c.stream,
                    addr: c.addr,
                    conn: life.conn(key),
                    _token: c.token,
                });
            }
        }

        // Read, feed the protocol, write; then let each connection say what is next
        // (this walk is also the deadline check: every client, every turn).
        let mut gone = Vec::new();
        for (key, c) in clients.iter_mut() {
            let fd = c.stream.as_raw_fd();
            let (r, w) = (is_in(&readable, fd), is_in(&writable, fd));
            let step = c.conn.pump(&c.stream, r, w, &mut buf, now);
            match apply(step, || c.stream.shutdown(Direction::Write)) {
                Ok(Step::Close) => gone.push(key),
                Ok(_) => {}
                Err(e) => {
                    log_io_error(&c.addr, &e);
                    gone.push(key);
                }
            }
        }
        for key in gone {
            log_closed(&clients.remove(key).addr);
        }
        life.sweep_due(now); // the walk above was this turn's sweep

        if life.finished(Instant::now(), clients.is_empty()) {
            return Ok(());
        }
    }
}

/// Whether `fd` is in a sorted list of ready descriptors.
fn is_in(ready: &[RawFd], fd: RawFd) -> bool {
    ready.binary_search(&fd).is_ok()
}

/// One select(2) call on `watch` (shutdown pipe, listener, mailbox) and the
/// clients' descriptors: returns the readable and the writable descriptors, sorted.
fn wait(
    watch: &[BorrowedFd<'_>],
    clients: &Slab<Client>,
    timeout: Option<Duration>,
) -> anyhow::Result<(Vec<RawFd>, Vec<RawFd>)> {
    let mut inputs = FdSet::new();
    let mut outputs = FdSet::new();
    for fd in watch {
        inputs.insert(*fd);
    }
    for (_, c) in clients {
        if c.conn.wants_read() {
            inputs.insert(c.stream.as_fd());
        }
        if c.conn.wants_write() {
            outputs.insert(c.stream.as_fd());
        }
    }
    let mut timeout =
        timeout.map(|left| TimeVal::new(left.as_secs() as _, left.subsec_micros() as _));
    match select(None, &mut inputs, &mut outputs, None, timeout.as_mut()) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok((Vec::new(), Vec::new())),
        Err(e) => anyhow::bail!("select: {e}"),
    }
    let readable = inputs.fds(None).map(|fd| fd.as_raw_fd()).collect();
    let writable = outputs.fds(None).map(|fd| fd.as_raw_fd()).collect();
    Ok((readable, writable))
}
