//! The life of an event loop, the same for `select`, `epoll` (and `reuseport`) and
//! `uring`: only how they wait differs, so everything else about a loop's life is
//! here, once.
//!
//! - **Accepting**: clients are taken [`ACCEPTS_PER_TURN`] at a time (a flood of
//!   connections cannot starve the clients already served), each admitted by the
//!   `--max-conns` [`Gate`]; when accept(2) runs out of descriptors or memory the
//!   loop leaves the listener alone for a back-off and keeps serving
//!   ([`super::accept::after_accept_error`]).
//! - **Deadlines**: idle timeouts and lingering closes are checked by a sweep every
//!   [`SWEEP`], so a busy loop does no per-client work beyond the ready clients;
//!   [`Lifecycle::wake_at`] says how long the loop may sleep.
//! - **Stopping**: on SIGINT/SIGTERM the loop stops accepting, tells every
//!   connection to stop reading and send what it owes, and ends when the last one
//!   has gone or the grace period ([`super::GRACE`]) is over.
//! - **Offloading**: with `--offload`, the pool's mailbox the loop must watch, and
//!   the connections' handles on the pool ([`Lifecycle::conn`]).
//!
//! The client table is a [`slab::Slab`]: a key is a small integer reused after its
//! client closes, which is what epoll's tokens, io_uring's user data and the
//! offload replies carry. A stale key is harmless: a closed socket's events are gone
//! with it, and an offload reply carries a job id its successor never issued.

use super::ServeConfig;
use super::accept::{Accepted, Client, Gate, after_accept_error, try_accept};
use super::conn::{Conn, Step};
use super::offload::{Done, Mailbox, Pool};
use crate::protocol::ServiceSpec;
use anyhow::Context;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients taken per turn, so a flood of connections cannot starve the others.
pub const ACCEPTS_PER_TURN: usize = 64;

/// How often deadlines (idle timeout, linger, accept back-off) are checked.
pub const SWEEP: Duration = Duration::from_millis(100);

/// One event loop's state outside its clients.
#[derive(Debug)]
pub struct Lifecycle<'a> {
    gate: Gate,
    service: ServiceSpec,
    idle_timeout: Option<Duration>,
    grace: Duration,
    offload: Option<(&'a Pool, Arc<Mailbox>)>,
    /// accept(2) ran out of a resource: leave the listener alone until then.
    paused_until: Option<Instant>,
    /// Shutdown was asked for; the grace period ends then.
    stopping_at: Option<Instant>,
    next_sweep: Instant,
}

impl<'a> Lifecycle<'a> {
    /// A loop admitting through `gate` (shared by `reuseport`'s loops) and handing
    /// fib to `pool` if given (`--offload`).
    pub fn new(
        cfg: &ServeConfig,
        gate: Gate,
        pool: Option<&'a Pool>,
    ) -> anyhow::Result<Lifecycle<'a>> {
        let offload = match pool {
            Some(pool) => Some((
                pool,
                Mailbox::new().context("creating the offload eventfd")?,
            )),
            None => None,
        };
        Ok(Lifecycle {
            gate,
            service: cfg.service.clone(),
            idle_timeout: cfg.idle_timeout,
            grace: cfg.grace,
            offload,
            paused_until: None,
            stopping_at: None,
            next_sweep: Instant::now() + SWEEP,
        })
    }

    /// The mailbox whose eventfd the loop must watch, with `--offload`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.offload.as_ref().map(|(_, m)| &**m)
    }

    /// A new connection for the client under `key`.
    pub fn conn(&self, key: usize) -> Conn {
        let handle = self.offload.as_ref().map(|(p, m)| p.handle(m, key));
        Conn::with_offload(self.service.session(), self.idle_timeout, handle)
    }

    /// Offloaded jobs that finished since the last call (empty without `--offload`).
    pub fn finished_jobs(&self) -> Vec<Done> {
        self.mailbox().map(Mailbox::take).unwrap_or_default()
    }

    /// Whether the loop should take new clients now.
    pub fn accepting(&self, now: Instant) -> bool {
        self.stopping_at.is_none() && self.paused_until.is_none_or(|t| now >= t)
    }

    /// Whether the loop is stopping (SIGINT/SIGTERM came).
    pub fn stopping(&self) -> bool {
        self.stopping_at.is_some()
    }

    /// Take up to [`ACCEPTS_PER_TURN`] clients from a non-blocking listener, handing
    /// each admitted one to `admit`. Returns whether clients may still be waiting
    /// (the turn's quota ran out, or accept is backing off): a loop that is told of
    /// new clients only once (edge-triggered) must come back for them.
    pub fn accept_from(
        &mut self,
        listener: &TcpListener,
        now: Instant,
        mut admit: impl FnMut(Client),
    ) -> bool {
        if !self.accepting(now) {
            return true;
        }
        self.paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            match try_accept(listener, &self.gate) {
                Accepted::Client(c) => admit(c),
                Accepted::Nothing { again: true } => {}
                Accepted::Nothing { again: false } => return false,
                Accepted::Backoff(d) => {
                    self.paused_until = Some(now + d);
                    return true;
                }
            }
        }
        true
    }

    /// A completion-based accept (io_uring) finished: the new client's socket is
    /// admitted through the gate, or closed here. `None` if refused or stopping.
    pub fn admit(&self, stream: TcpStream) -> Option<Client> {
        if self.stopping() {
            return None;
        }
        let addr = stream.peer_addr().ok()?;
        let token = self.gate.admit(&addr)?;
        let _ = stream.set_nodelay(true);
        Some(Client {
            stream,
            addr,
            token,
        })
    }

    /// A completion-based accept failed with `err`: back off if it says so.
    pub fn accept_failed(&mut self, err: &io::Error, now: Instant) {
        if let Some(pause) = after_accept_error(err) {
            self.paused_until = Some(now + pause);
        }
    }

    /// Whether an accept paused by a back-off may be tried again now (clears the
    /// pause). False when none was paused.
    pub fn resume_accepting(&mut self, now: Instant) -> bool {
        if self.stopping() || self.paused_until.is_none_or(|t| now < t) {
            return false;
        }
        self.paused_until = None;
        true
    }

    /// Shutdown came. True the first time: the loop must then call
    /// [`Conn::stop`] on every connection and stop accepting.
    pub fn stop(&mut self, now: Instant) -> bool {
        if self.stopping_at.is_some() {
            return false;
        }
        self.stopping_at = Some(now + self.grace);
        true
    }

    /// Whether it is time to check every connection's deadlines (and when next).
    pub fn sweep_due(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        self.next_sweep = now + SWEEP;
        true
    }

    /// The latest instant the loop may sleep until: the next sweep (when it has
    /// clients), the end of an accept back-off, the end of the grace period.
    pub fn wake_at(&self, has_clients: bool) -> Option<Instant> {
        has_clients
            .then_some(self.next_sweep)
            .into_iter()
            .chain(self.paused_until)
            .chain(self.stopping_at)
            .min()
    }

    /// [`Lifecycle::wake_at`] as a timeout from `now`, rounded up a millisecond
    /// so the loop never wakes just before the instant and spins.
    pub fn timeout(&self, has_clients: bool, now: Instant) -> Option<Duration> {
        self.wake_at(has_clients)
            .map(|w| w.saturating_duration_since(now) + Duration::from_millis(1))
    }

    /// Whether the loop is done: stopping, and every client gone or the grace over.
    pub fn finished(&self, now: Instant, no_clients: bool) -> bool {
        self.stopping_at.is_some_and(|end| no_clients || now >= end)
    }
}

/// The one half-close path: a connection that sent all it owed and must close
/// sends FIN ([`Step::ShutdownWrite`]) and lingers, reading, until the client closes
/// (see [`Conn::step`]). Turns that step into `shutdown_write` (the socket's
/// `shutdown(Write)`) and [`Step::Wait`].
pub fn apply(
    step: io::Result<Step>,
    shutdown_write: impl FnOnce() -> io::Result<()>,
) -> io::Result<Step> {
    match step {
        Ok(Step::ShutdownWrite) => shutdown_write().map(|()| Step::Wait),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::accept::BACKOFF;

    fn life() -> Lifecycle<'static> {
        let cfg = ServeConfig {
            service: ServiceSpec::Fib { max_n: 30 },
            workers: 1,
            max_conns: 2,
            idle_timeout: None,
            grace: Duration::from_secs(3),
            offload: false,
            fork: false,
        };
        Lifecycle::new(&cfg, Gate::new(cfg.max_conns), None).unwrap()
    }

    #[test]
    fn stop_starts_the_grace_period_once() {
        let mut l = life();
        let now = Instant::now();
        assert!(l.accepting(now));
        assert!(!l.finished(now, true), "not stopping: never finished");
        assert!(l.stop(now));
        assert!(!l.stop(now), "the second signal changes nothing");
        assert!(!l.accepting(now));
        assert!(l.finished(now, true), "no clients left");
        assert!(!l.finished(now, false), "clients still owed replies");
        assert!(
            l.finished(now + Duration::from_secs(3), false),
            "grace over"
        );
    }

    #[test]
    fn out_of_descriptors_pauses_accepting_until_the_back_off_ends() {
        let mut l = life();
        let now = Instant::now();
        l.accept_failed(&io::Error::from_raw_os_error(libc::EMFILE), now);
        assert!(!l.accepting(now));
        assert!(!l.resume_accepting(now));
        assert_eq!(l.wake_at(false), Some(now + BACKOFF));
        assert!(l.resume_accepting(now + BACKOFF));
        assert!(l.accepting(now + BACKOFF));
        l.accept_failed(&io::Error::from_raw_os_error(libc::ECONNABORTED), now);
        assert!(l.accepting(now), "a client that left is no reason to pause");
    }

    #[test]
    fn sweeps_come_every_sweep_period() {
        let mut l = life();
        let start = Instant::now();
        assert_eq!(l.wake_at(false), None, "no clients, nothing to wait for");
        let first = l.wake_at(true).unwrap();
        assert!(!l.sweep_due(first - Duration::from_millis(1)));
        assert!(l.sweep_due(first));
        assert!(!l.sweep_due(first), "one sweep per period");
        assert!(l.wake_at(true).unwrap() >= start + SWEEP);
    }

    #[test]
    fn accepts_at_most_a_turns_quota() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut l = life();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        let mut admitted = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Two fit under --max-conns 2; the third is refused; then the queue is empty.
        while admitted.len() < 2 && Instant::now() < deadline {
            l.accept_from(&listener, Instant::now(), |c| admitted.push(c));
        }
        assert_eq!(admitted.len(), 2);
        let mut more = Vec::new();
        while l.accept_from(&listener, Instant::now(), |c| more.push(c)) {}
        assert!(more.is_empty(), "past --max-conns nobody is admitted");
    }
}
