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
//! Deadlines (idle timeout, linger) are checked by a sweep every [`SWEEP`], not on
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

use crate::serve::accept::{Accepted, ConnToken, Gate, try_accept};
use crate::serve::conn::{Conn, Hints, READ_SIZE, Step};
use crate::serve::offload::{Mailbox, Pool};
use crate::serve::{ServeConfig, Shutdown, log_closed, log_io_error, log_open};
use anyhow::Context;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::net::{Shutdown as Direction, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SHUTDOWN: Token = Token(0);
const LISTENER: Token = Token(1);
const MAILBOX: Token = Token(2);
/// Client keys start here.
const FIRST_CLIENT: usize = 3;

/// Clients taken per turn, so a flood of connections cannot starve the others.
const ACCEPTS_PER_TURN: usize = 64;

/// How often deadlines (idle timeout, linger) are checked.
pub const SWEEP: Duration = Duration::from_millis(100);

/// Clients by key (a key is its slot's index plus [`FIRST_CLIENT`]); a closed
/// client's slot is reused. A stale key is harmless: events for a closed socket
/// are gone with it, and offload replies carry job ids its successor never issued.
#[derive(Default)]
struct Clients {
    slots: Vec<Option<Client>>,
    free: Vec<usize>,
    len: usize,
}

impl Clients {
    /// The key the next [`Clients::insert`] will use.
    fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len()) + FIRST_CLIENT
    }

    fn insert(&mut self, client: Client) -> usize {
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[i] = Some(client);
        self.len += 1;
        i + FIRST_CLIENT
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut Client> {
        self.slots.get_mut(key.checked_sub(FIRST_CLIENT)?)?.as_mut()
    }

    fn remove(&mut self, key: usize) -> Option<Client> {
        let i = key.checked_sub(FIRST_CLIENT)?;
        let client = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(client)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i + FIRST_CLIENT)
    }
}

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    conn: Conn,
    hints: Hints,
    _token: ConnToken,
}

pub fn run(listener: TcpListener, cfg: &ServeConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let pool = crate::serve::offload_pool(cfg)?;
    serve_loop(
        listener,
        cfg,
        &shutdown,
        &Gate::new(cfg.max_conns),
        pool.as_ref(),
    )
}

/// The loop itself, on the calling thread; `reuseport` runs one per worker.
pub fn serve_loop(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    gate: &Gate,
    pool: Option<&Pool>,
) -> anyhow::Result<()> {
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
    let mailbox = match pool {
        Some(_) => {
            let m = Mailbox::new().context("creating the offload eventfd")?;
            registry
                .register(
                    &mut SourceFd(&m.fd().as_raw_fd()),
                    MAILBOX,
                    Interest::READABLE,
                )
                .context("registering the offload eventfd")?;
            Some(m)
        }
        None => None,
    };
    let mut events = Events::with_capacity(1024);
    let mut clients = Clients::default();
    let mut buf = vec![0u8; READ_SIZE];
    let mut again: Vec<usize> = Vec::new(); // clients with work left from the last turn
    let mut touched: Vec<usize> = Vec::new(); // clients to drive this turn
    let mut listener_ready = false; // edge-triggered: clients may be waiting
    let mut accept_paused_until: Option<Instant> = None;
    let mut stopping_at: Option<Instant> = None; // end of the grace period
    let mut next_sweep = Instant::now() + SWEEP;
    loop {
        let now = Instant::now();
        let accepting = stopping_at.is_none() && accept_paused_until.is_none_or(|t| now >= t);
        let timeout = if !again.is_empty() || (listener_ready && accepting) {
            Some(Duration::ZERO)
        } else {
            (!clients.is_empty())
                .then_some(next_sweep)
                .into_iter()
                .chain(accept_paused_until)
                .chain(stopping_at)
                .min()
                .map(|w| w.saturating_duration_since(now) + Duration::from_millis(1))
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
                    if stopping_at.is_none() {
                        stopping_at = Some(now + cfg.grace);
                        let keys: Vec<usize> = clients.keys().collect();
                        for key in keys {
                            if let Some(c) = clients.get_mut(key) {
                                c.conn.stop();
                                touched.push(key);
                            }
                        }
                    }
                }
                LISTENER => listener_ready = true,
                MAILBOX => {
                    for done in mailbox.as_ref().map(|m| m.take()).unwrap_or_default() {
                        if let Some(c) = clients.get_mut(done.key)
                            && c.conn.completed(done.id, done.reply)
                        {
                            touched.push(done.key);
                        }
                    }
                }
                Token(key) => {
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

        if listener_ready && stopping_at.is_none() && accept_paused_until.is_none_or(|t| now >= t) {
            accept_paused_until = None;
            listener_ready = false;
            for i in 0..ACCEPTS_PER_TURN {
                match try_accept(&listener, gate) {
                    Accepted::Client(c) => {
                        if let Err(e) = c.stream.set_nonblocking(true) {
                            log_io_error(&c.addr, &e);
                            continue;
                        }
                        let key = clients.next_key();
                        let mut stream = TcpStream::from_std(c.stream);
                        if let Err(e) = poll.registry().register(
                            &mut stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log_io_error(&c.addr, &e);
                            continue;
                        }
                        log_open(&c.addr);
                        let offload = pool.zip(mailbox.as_ref()).map(|(p, m)| p.handle(m, key));
                        let conn =
                            Conn::with_offload(cfg.service.session(), cfg.idle_timeout, offload);
                        let hints = Hints {
                            readable: true, // data may have come with the handshake
                            ..Hints::default()
                        };
                        let key = clients.insert(Client {
                            stream,
                            addr: c.addr,
                            conn,
                            hints,
                            _token: c.token,
                        });
                        touched.push(key);
                    }
                    Accepted::Nothing { again: true } => {}
                    Accepted::Nothing { again: false } => break,
                    Accepted::Backoff(d) => {
                        accept_paused_until = Some(now + d);
                        listener_ready = true;
                        break;
                    }
                }
                if i + 1 == ACCEPTS_PER_TURN {
                    listener_ready = true; // more may be waiting: come back next turn
                }
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

        if now >= next_sweep {
            next_sweep = now + SWEEP;
            let keys: Vec<usize> = clients.keys().collect();
            for key in keys {
                if let Some(c) = clients.get_mut(key) {
                    let step = c.conn.step(now);
                    settle(&mut clients, key, Ok((step, false)), &mut again);
                }
            }
        }

        if let Some(end) = stopping_at
            && (clients.is_empty() || now >= end)
        {
            return Ok(());
        }
    }
}

/// Act on what a connection said: shut down its write side (and come back to it
/// next turn: it lingers, reading), close it, or note that it has work left.
fn settle(
    clients: &mut Clients,
    key: usize,
    result: std::io::Result<(Step, bool)>,
    again: &mut Vec<usize>,
) {
    let Some(c) = clients.get_mut(key) else {
        return;
    };
    let result = match result {
        Ok((Step::ShutdownWrite, _)) => c
            .stream
            .shutdown(Direction::Write)
            .map(|()| (Step::Wait, true)),
        other => other,
    };
    match result {
        Ok((Step::Wait | Step::ShutdownWrite, more)) => {
            if more {
                again.push(key);
            }
        }
        Ok((Step::Close, _)) => {
            if let Some(c) = clients.remove(key) {
                log_closed(&c.addr);
            }
        }
        Err(e) => {
            log_io_error(&c.addr, &e);
            if let Some(c) = clients.remove(key) {
                log_closed(&c.addr);
            }
        }
    }
}
