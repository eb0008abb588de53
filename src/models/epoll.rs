//! `epoll`: one thread, a readiness loop on epoll(7), through mio. Where the talk
//! ends: "select is painful; epoll, kqueue and IOCP are the scalable mechanisms;
//! asyncio hides them." concur runs on Linux only, so epoll is the one of the three
//! it uses (and io_uring, in `uring`, stands in for IOCP).
//!
//! ```python
//! sel = selectors.DefaultSelector()          # epoll on Linux
//! sel.register(sock, EVENT_READ, accept)
//! while True:
//!     for key, mask in sel.select():
//!         key.data(key.fileobj, mask)          # accept, or read/feed/write one client
//! ```
//!
//! The difference from `select` is only in how the loop waits. select(2) is told
//! every descriptor on every call and scans them all; epoll is told once (a socket
//! is registered when accepted, for reading and writing, edge-triggered) and returns
//! only the sockets that changed. A turn costs O(ready sockets), not O(clients),
//! and there is no FD_SETSIZE. Edge-triggered means an event says "something
//! changed", not "readable now", so each client keeps [`Hints`] and
//! [`Conn::drive`] reads and writes until the socket would block.
//!
//! Everything else about the loop's life is [`Lifecycle`]'s, the same for select
//! and uring: accepting a turn's quota under `--max-conns`, backing off when out of
//! descriptors, stopping with a grace period, and checking deadlines (idle timeout,
//! linger) by a sweep every [`SWEEP`](crate::serve::lifecycle::SWEEP) rather than on
//! every turn, so a busy loop does no per-client work beyond the ready ones.
//!
//! fib runs inline on the loop's thread, as in the talk, unless `--offload` sends it
//! to a worker pool ([`crate::serve::offload`]).
//!
//! Cost per connection: a registration in the kernel's epoll set, the [`Conn`]
//! (session, phase, an unsent buffer only while replies wait) and a map entry:
//! about 300 bytes of resident memory per idle connection (measured with 10,000
//! held by `concur hold`; the C reference in `benches/reference/` needs 52), no
//! buffer while idle (reads go to one loop-wide buffer). Ceiling: the descriptor
//! limit and `--max-conns`.

use crate::serve::accept::{ConnToken, Gate};
use crate::serve::conn::{Conn, Hints, READ_SIZE, Step};
use crate::serve::lifecycle::{Lifecycle, apply};
use crate::serve::offload::Pool;
use crate::serve::{Ready, ServeConfig, Shutdown, log_closed, log_io_error, log_open};
use anyhow::Context;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SHUTDOWN: Token = Token(0);
const LISTENER: Token = Token(1);
const MAILBOX: Token = Token(2);
/// A client's token is its slab key plus this.
const FIRST_CLIENT: usize = 3;

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    conn: Conn,
    hints: Hints,
    _token: ConnToken,
}

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let pool = crate::serve::offload_pool(cfg)?;
    let gate = Gate::new(cfg.max_conns);
    serve_loop(listener, cfg, &shutdown, &gate, pool.as_ref(), || {
        ready.announce()
    })
}

/// The loop itself, on the calling thread; `reuseport` runs one per worker.
/// `ready` is called once the loop is set up, before it serves.
pub fn serve_loop(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    gate: &Gate,
    pool: Option<&Pool>,
    ready: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut life = Lifecycle::new(cfg, gate.clone(), pool)?;
    let mut poll = Poll::new().context("creating the epoll instance")?;
    let registry = poll.registry();
    registry
        .register(
            &mut SourceFd(&shutdown.raw_fd()),
            SHUTDOWN,
            Interest::READABLE,
        )
        .context("registering the shutdown pipe")?;
    registry
        .register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )
        .context("registering the listener")?;
    if let Some(m) = life.mailbox() {
        registry
            .register(
                &mut SourceFd(&m.fd().as_raw_fd()),
                MAILBOX,
                Interest::READABLE,
            )
            .context("registering the offload eventfd")?;
    }
    let mut events = Events::with_capacity(1024);
    let mut clients: Slab<Client> = Slab::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut again: Vec<usize> = Vec::new(); // clients with work left from the last turn
    let mut touched: Vec<usize> = Vec::new(); // clients to drive this turn
    let mut listener_ready = false; // edge-triggered: clients may be waiting
    ready()?;
    loop {
        let now = Instant::now();
        let timeout = if !again.is_empty() || (listener_ready && life.accepting(now)) {
            Some(Duration::ZERO)
        } else {
            life.timeout(!clients.is_empty(), now)
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(e).context("epoll_wait"),
        }
        let now = Instant::now();
        touched.clear();
        std::mem::swap(&mut touched, &mut again);
        for event in events.iter() {
            match event.token() {
                SHUTDOWN => {
                    if life.stop(now) {
                        for (key, c) in clients.iter_mut() {
                            c.conn.stop();
                            touched.push(key);
                        }
                    }
                }
                LISTENER => listener_ready = true,
                MAILBOX => {
                    for done in life.finished_jobs() {
                        if let Some(c) = clients.get_mut(done.key)
                            && c.conn.completed(done.id, done.reply)
                        {
                            touched.push(done.key);
                        }
                    }
                }
                Token(token) => {
                    let key = token - FIRST_CLIENT;
                    if let Some(c) = clients.get_mut(key) {
                        let failed = event.is_error();
                        let closed = event.is_read_closed() || failed;
                        c.hints.read_closed |= closed;
                        c.hints.readable |= event.is_readable() || closed;
                        c.hints.writable |=
                            event.is_writable() || event.is_write_closed() || failed;
                        touched.push(key);
                    }
                }
            }
        }

        if listener_ready && life.accepting(now) {
            let mut admitted = Vec::new();
            listener_ready = life.accept_from(&listener, now, |c| admitted.push(c));
            for c in admitted {
                if let Err(e) = c.stream.set_nonblocking(true) {
                    log_io_error(&c.addr, &e);
                    continue;
                }
                let entry = clients.vacant_entry();
                let key = entry.key();
                let mut stream = TcpStream::from_std(c.stream);
                if let Err(e) = poll.registry().register(
                    &mut stream,
                    Token(key + FIRST_CLIENT),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    log_io_error(&c.addr, &e);
                    continue;
                }
                log_open(&c.addr);
                entry.insert(Client {
                    stream,
                    addr: c.addr,
                    conn: life.conn(key),
                    hints: Hints {
                        readable: true, // data may have come with the handshake
                        ..Hints::default()
                    },
                    _token: c.token,
                });
                touched.push(key);
            }
        }

        touched.sort_unstable();
        touched.dedup();
        for &key in &touched {
            let Some(c) = clients.get_mut(key) else {
                continue;
            };
            let result = c.conn.drive(&c.stream, &mut c.hints, &mut buf, now);
            settle(&mut clients, key, result, &mut again);
        }

        if life.sweep_due(now) {
            let keys: Vec<usize> = clients.iter().map(|(key, _)| key).collect();
            for key in keys {
                let step = clients[key].conn.step(now);
                settle(&mut clients, key, Ok((step, false)), &mut again);
            }
        }

        if life.finished(now, clients.is_empty()) {
            return Ok(());
        }
    }
}

/// Act on what a connection said: shut down its write side (and come back to it
/// next turn: it lingers, reading), close it, or note that it has work left.
fn settle(
    clients: &mut Slab<Client>,
    key: usize,
    result: std::io::Result<(Step, bool)>,
    again: &mut Vec<usize>,
) {
    let Some(c) = clients.get_mut(key) else {
        return;
    };
    let (step, more) = match result {
        Ok((step, more)) => (Ok(step), more),
        Err(e) => (Err(e), false),
    };
    let half_closed = matches!(step, Ok(Step::ShutdownWrite));
    match apply(step, || c.stream.shutdown(Direction::Write)) {
        Ok(Step::Wait | Step::ShutdownWrite) => {
            if more || half_closed {
                again.push(key);
            }
        }
        Ok(Step::Close) => {
            log_closed(&clients.remove(key).addr);
        }
        Err(e) => {
            log_io_error(&c.addr, &e);
            log_closed(&clients.remove(key).addr);
        }
    }
}
