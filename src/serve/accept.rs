//! The accept loop's rules, shared by every model.
//!
//! - `--max-conns`: a [`Gate`] counts open connections; past the limit a new client
//!   is closed at once and counted in the log. Existing clients are unaffected.
//! - accept() failing with EMFILE/ENFILE (out of descriptors) or ENOBUFS/ENOMEM must
//!   neither spin (the pending connection stays queued, so the listener stays
//!   readable) nor crash: the caller stops watching the listener for [`BACKOFF`],
//!   keeps serving its clients, and tries again. Clients leaving free descriptors and
//!   the server recovers by itself.
//! - Transient errors (ECONNABORTED: the client left before we took it; EINTR) are
//!   retried at once.

use super::Shutdown;
use super::shutdown::poll_readable;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to leave the listener alone after accept() ran out of a resource.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Counts open connections against `--max-conns`.
#[derive(Debug, Clone)]
pub struct Gate {
    max: usize,
    live: Count,
    refused: Arc<AtomicU64>,
}

/// Where a gate counts: in this process, or in memory shared by forked processes.
#[derive(Debug, Clone)]
enum Count {
    Local(Arc<AtomicUsize>),
    /// One slot per process (`prefork`): a process counts in its own slot, the total
    /// is the sum, and a parent can zero the slot of a child that died.
    Shared {
        slots: &'static [AtomicUsize],
        mine: usize,
    },
}

impl Count {
    fn mine(&self) -> &AtomicUsize {
        match self {
            Count::Local(c) => c,
            Count::Shared { slots, mine } => &slots[*mine],
        }
    }

    fn total(&self) -> usize {
        match self {
            Count::Local(c) => c.load(Ordering::SeqCst),
            Count::Shared { slots, .. } => slots.iter().map(|s| s.load(Ordering::SeqCst)).sum(),
        }
    }
}

/// One admitted connection; dropping it frees its place under `--max-conns`.
#[derive(Debug)]
pub struct ConnToken {
    live: Count,
}

impl Drop for ConnToken {
    fn drop(&mut self) {
        self.live.mine().fetch_sub(1, Ordering::SeqCst);
    }
}

/// `n` counters in anonymous shared memory, inherited by forked children, zeroed.
/// The mapping lives as long as the process.
pub fn shared_slots(n: usize) -> io::Result<&'static [AtomicUsize]> {
    let len = n.max(1) * std::mem::size_of::<AtomicUsize>();
    // SAFETY: an anonymous shared mapping with no address hint; checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is zeroed, page-aligned, `len` bytes long and never
    // unmapped; zero is a valid AtomicUsize.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicUsize>(), n.max(1)) })
}

impl Gate {
    pub fn new(max: usize) -> Gate {
        Gate {
            max,
            live: Count::Local(Arc::new(AtomicUsize::new(0))),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A gate counting in `slots[mine]` against the total over all `slots`
    /// (see [`shared_slots`]).
    pub fn shared(max: usize, slots: &'static [AtomicUsize], mine: usize) -> Gate {
        Gate {
            max,
            live: Count::Shared { slots, mine },
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Admit a new client, or log and count its refusal (the caller drops it).
    pub fn admit(&self, addr: &SocketAddr) -> Option<ConnToken> {
        // Count ourselves in first, then look at the total: two processes admitting
        // at once may both refuse, but never both get in past the limit.
        let before = self.live.mine().fetch_add(1, Ordering::SeqCst);
        let token = ConnToken {
            live: self.live.clone(),
        };
        let live = match &self.live {
            Count::Local(_) => before,
            Count::Shared { .. } => self.live.total() - 1,
        };
        if live < self.max {
            return Some(token);
        }
        drop(token);
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            "refused {addr}: {live} connections open, --max-conns {} ({refused} refused so far)",
            self.max
        );
        None
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.live.total()
    }

    /// Block until every connection has closed or `deadline` passes; true if all closed.
    pub fn wait_all_closed(&self, deadline: Instant) -> bool {
        while self.live() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// At most one resource-exhaustion warning per second, however long it lasts.
static WARN_LIMIT: RateLimit = RateLimit::new();

/// Lets one event through per second, counting the ones it holds back.
pub struct RateLimit {
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)`, or `None` to skip.
    pub fn allow(&self) -> Option<u64> {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

/// What to do after accept() failed: `None` retry at once, `Some(d)` leave the
/// listener alone for `d`. Logs what deserves it.
pub fn after_accept_error(err: &io::Error) -> Option<Duration> {
    match err.raw_os_error() {
        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EAGAIN) => None,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            if let Some(repeats) = WARN_LIMIT.allow() {
                tracing::warn!(
                    "accept: {err}; not accepting for {} ms, existing clients still served \
                     ({repeats} more such failures in the last second)",
                    BACKOFF.as_millis()
                );
            }
            Some(BACKOFF)
        }
        _ if err.kind() == io::ErrorKind::WouldBlock => None,
        _ => {
            tracing::error!("accept: {err}; retrying in {} ms", BACKOFF.as_millis());
            Some(BACKOFF)
        }
    }
}

/// A client taken off the listener and admitted.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub token: ConnToken,
}

/// The outcome of one non-blocking accept attempt.
#[derive(Debug)]
pub enum Accepted {
    Client(Client),
    /// Nothing to take, or a client was refused or had already gone: try again later
    /// (`again` says whether calling at once may find another client).
    Nothing {
        again: bool,
    },
    /// Out of a resource: leave the listener alone this long.
    Backoff(Duration),
}

/// One accept() on a non-blocking listener, with the `--max-conns` check. The
/// client's socket is blocking, with TCP_NODELAY (replies are small and prompt).
pub fn try_accept(listener: &TcpListener, gate: &Gate) -> Accepted {
    match listener.accept() {
        Ok((stream, addr)) => {
            let Some(token) = gate.admit(&addr) else {
                return Accepted::Nothing { again: true };
            };
            let _ = stream.set_nodelay(true);
            let _ = stream.set_nonblocking(false);
            Accepted::Client(Client {
                stream,
                addr,
                token,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Nothing { again: false },
        Err(e) => match after_accept_error(&e) {
            None => Accepted::Nothing { again: true },
            Some(d) => Accepted::Backoff(d),
        },
    }
}

/// What a blocking accept loop sees next.
#[derive(Debug)]
pub enum Next {
    Client(Client),
    /// The tick passed with no client (a chance to reap children, say).
    Tick,
    Shutdown,
}

/// The accept loop of the blocking models: waits in poll(2) on the listener and the
/// shutdown pipe, so a signal ends it at once.
pub struct Acceptor<'a> {
    listener: &'a TcpListener,
    shutdown: &'a Shutdown,
    pub gate: Gate,
    tick: Option<Duration>,
}

impl<'a> Acceptor<'a> {
    /// `tick`: return [`Next::Tick`] at least this often (`None`: only for a client
    /// or shutdown).
    pub fn new(
        listener: &'a TcpListener,
        shutdown: &'a Shutdown,
        max_conns: usize,
        tick: Option<Duration>,
    ) -> Self {
        Acceptor::with_gate(listener, shutdown, Gate::new(max_conns), tick)
    }

    /// [`Acceptor::new`] with a gate of the caller's (shared between processes, say).
    pub fn with_gate(
        listener: &'a TcpListener,
        shutdown: &'a Shutdown,
        gate: Gate,
        tick: Option<Duration>,
    ) -> Self {
        Acceptor {
            listener,
            shutdown,
            gate,
            tick,
        }
    }

    /// Wait for the next admitted client, a tick, or shutdown.
    pub fn wait(&mut self) -> Next {
        loop {
            let ready = poll_readable(&[self.shutdown.fd(), self.listener.as_fd()], self.tick);
            if ready[0] {
                return Next::Shutdown;
            }
            if !ready[1] {
                if self.tick.is_some() {
                    return Next::Tick;
                }
                continue;
            }
            match try_accept(self.listener, &self.gate) {
                Accepted::Client(c) => return Next::Client(c),
                Accepted::Nothing { .. } => {}
                Accepted::Backoff(d) => {
                    if self.shutdown.wait(Some(d)) {
                        return Next::Shutdown;
                    }
                }
            }
            // With a tick, the caller gets a turn after every attempt, so a stream of
            // refused clients cannot keep it from its periodic work.
            if self.tick.is_some() {
                return Next::Tick;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_second() {
        let limit = RateLimit::new();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
    }

    #[test]
    fn gate_counts_and_refuses() {
        let gate = Gate::new(2);
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = gate.admit(&addr).unwrap();
        let _b = gate.admit(&addr).unwrap();
        assert!(gate.admit(&addr).is_none());
        assert_eq!(gate.live(), 2);
        drop(a);
        assert!(gate.admit(&addr).is_some());
    }

    #[test]
    fn shared_gate_counts_over_every_slot() {
        let slots = shared_slots(3).unwrap();
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = Gate::shared(2, slots, 0);
        let b = Gate::shared(2, slots, 1);
        let _one = a.admit(&addr).unwrap();
        let two = b.admit(&addr).unwrap();
        assert!(Gate::shared(2, slots, 2).admit(&addr).is_none());
        assert_eq!(a.live(), 2);
        drop(two);
        assert_eq!(slots[1].load(Ordering::SeqCst), 0);
        assert!(b.admit(&addr).is_some());
    }

    #[test]
    fn out_of_descriptors_backs_off_but_transient_errors_retry() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(after_accept_error(&emfile), Some(BACKOFF));
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(after_accept_error(&aborted), None);
    }
}
