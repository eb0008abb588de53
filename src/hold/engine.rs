//! The three phases of a hold, as one epoll loop (mio) over one process's share of
//! the connections: open, one verified round trip each, hold. `super::run_hold`
//! drives them back to back; a hold spread over processes (`super::spread`) drives
//! each child's phases one command at a time, so that across all the processes they
//! still happen in the same order, and with the same bounds, as in one.
//!
//! Opening is paced twice. At most `--batch` connects are in progress at once; and,
//! when the server's listeners are on this machine, no more are started than its
//! accept queues have room for (read from the kernel with sock_diag, see
//! [`crate::sys::AcceptQueues`]). On loopback the handshake completes inside the
//! kernel at once, so a connect that "finished" may still be waiting in the server's
//! accept queue: bounding connects in progress alone does not stop a client from
//! filling that queue faster than the server accepts, and past a full queue the kernel
//! drops SYNs, each one retried by its client only a second or more later. A
//! listener reads its backlog with `listen(fd, 1024)`; at most that many may wait.

use super::{HoldConfig, HoldReport, RttErrors};
use crate::load::Service;
use crate::load::verify::{EchoVerifier, FibVerifier, PayloadPool, Verifier};
use anyhow::Result;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The token of the descriptor that ends the hold phase early (a spread child's
/// standard input: its parent closes it).
const STOP: Token = Token(usize::MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting(Instant),
    Open,
    Waiting(Instant),
    Answered,
    Dead,
}

struct Slot {
    stream: Option<TcpStream>,
    state: State,
    verifier: Verifier,
}

pub(super) struct Hold<'a> {
    config: &'a HoldConfig,
    addr: SocketAddr,
    /// The global index of this process's first connection: connection `i` here is
    /// connection `offset + i` of the whole hold (its source address follows from it).
    offset: usize,
    /// The server's accept queues, when its listeners are on this machine.
    queues: Option<crate::sys::AcceptQueues>,
    /// The source addresses used, as block numbers (0 is 127.0.0.1): (first, last).
    blocks: Option<(usize, usize)>,
    poll: Poll,
    events: Events,
    slots: Vec<Slot>,
    pool: PayloadPool,
    fib_line: Vec<u8>,
    pub(super) opened: u64,
    pub(super) failed: BTreeMap<String, u64>,
    pub(super) answered_ok: u64,
    pub(super) rtt_errors: RttErrors,
    pub(super) closed_while_holding: u64,
    pub(super) rtt: Histogram<u64>,
    buf: Vec<u8>,
}

/// `count` per second of `secs` (0 when no time passed).
pub(super) fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None => format!("{:?}", e.kind()),
    }
}

impl<'a> Hold<'a> {
    pub(super) fn new(config: &'a HoldConfig, addr: SocketAddr, offset: usize) -> Result<Self> {
        // Pacing by the accept queues only where they can be seen.
        let queues = crate::sys::AcceptQueues::new(addr)
            .ok()
            .filter(|q| q.room().is_some());
        Ok(Hold {
            config,
            addr,
            offset,
            queues,
            blocks: None,
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            slots: Vec::with_capacity(config.conns),
            pool: PayloadPool::new(config.size, &config.prefix, fastrand::u64(..)),
            fib_line: FibVerifier::request_line(config.n, false),
            opened: 0,
            failed: BTreeMap::new(),
            answered_ok: 0,
            rtt_errors: RttErrors::default(),
            closed_while_holding: 0,
            rtt: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?,
            buf: vec![0; 64 * 1024],
        })
    }

    /// This process's report; the caller adds what it read around the phases (the
    /// server, the kernel, `--start-at`'s lateness).
    pub(super) fn report(
        &self,
        fd_limit: u64,
        wall_start: f64,
        open_secs: f64,
        held_secs: f64,
    ) -> HoldReport {
        let config = self.config;
        let (size, n, prefix) =
            crate::load::report::spoken(config.service, config.size, config.n, &config.prefix);
        HoldReport {
            addr: config.addr.clone(),
            service: match config.service {
                Service::Echo => "echo".into(),
                Service::Fib => "fib".into(),
            },
            conns: config.conns,
            in_flight: config.in_flight,
            opened: self.opened,
            failed: self.failed.values().sum(),
            failed_by_errno: self.failed.clone(),
            answered_ok: self.answered_ok,
            rtt_errors: self.rtt_errors.clone(),
            closed_while_holding: self.closed_while_holding,
            open_secs,
            open_per_sec: per_sec(self.opened, open_secs),
            held_secs,
            source_addrs: self.sources_used(),
            fd_limit,
            processes: 1,
            rtt_us: super::rtt_of(&self.rtt),
            server: None,
            kernel: None,
            window_start_unix: wall_start,
            window_end_unix: super::unix_now(),
            start_late_secs: None,
            size,
            n,
            prefix,
            duration_secs: config.duration.as_secs_f64(),
            histogram: crate::load::report::encode_histogram(&self.rtt),
            interrupted: crate::interrupt::requested(),
        }
    }

    fn fail_connect(&mut self, e: &std::io::Error) {
        *self.failed.entry(errno_name(e)).or_default() += 1;
    }

    /// The source address for connection `i`: spread over 127.0.0.x on loopback.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let block = ((self.offset + i) / self.config.per_source) as u32;
                let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + block);
                Some(SocketAddr::new(IpAddr::V4(src), 0))
            }
            _ => None,
        }
    }

    /// Start one non-blocking connect.
    fn start_connect(&mut self, i: usize) -> std::io::Result<TcpStream> {
        let socket = Socket::new(
            Domain::for_address(self.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(src) = self.source(i) {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SockAddr::from(src))?;
            let block = (self.offset + i) / self.config.per_source;
            self.blocks = Some(match self.blocks {
                Some((first, last)) => (first.min(block), last.max(block)),
                None => (block, block),
            });
        }
        match socket.connect(&SockAddr::from(self.addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    fn verifier(&self, i: usize) -> Verifier {
        match self.config.service {
            Service::Echo => Verifier::Echo(EchoVerifier::new(
                self.pool.clone(),
                i as u64,
                self.config.prefix.clone().into(),
            )),
            Service::Fib => Verifier::Fib(FibVerifier::new(self.config.n)),
        }
    }

    /// Source addresses this process used.
    pub(super) fn sources_used(&self) -> usize {
        self.blocks.map_or(0, |(first, last)| last - first + 1)
    }

    /// How many more connects may start now: `batch` less those in progress, and no
    /// more than the server's fullest accept queue has room for (those in progress
    /// will take places in it too). `credit` is what the last reading of the queues
    /// allowed and has not been used yet; they are read again once it is spent.
    fn may_start(&mut self, in_progress: usize, credit: &mut usize) -> usize {
        let by_batch = self.config.batch.saturating_sub(in_progress);
        let Some(queues) = &self.queues else {
            return by_batch;
        };
        if *credit == 0 {
            // A listener gone (the server stopped): connects will fail on their own.
            let room = queues.room().map_or(by_batch, |r| r as usize);
            *credit = room.saturating_sub(in_progress);
        }
        by_batch.min(*credit)
    }

    /// Phase 1: open every connection, at most `batch` connects in progress and no
    /// more than the server's accept queues have room for (see the module doc).
    pub(super) fn open_all(&mut self) -> Result<()> {
        let mut next = 0;
        let mut pending: VecDeque<usize> = VecDeque::new();
        let mut in_progress = 0usize;
        let mut credit = 0usize;
        while next < self.config.conns || in_progress > 0 {
            // Ctrl-C: connects still in progress are neither opened nor failed.
            if crate::interrupt::requested() {
                break;
            }
            let mut may = if next < self.config.conns {
                self.may_start(in_progress, &mut credit)
            } else {
                0
            };
            let starved = next < self.config.conns && may == 0 && in_progress == 0;
            while next < self.config.conns && may > 0 {
                may -= 1;
                credit = credit.saturating_sub(1);
                let i = next;
                next += 1;
                let verifier = self.verifier(i);
                let mut slot = Slot {
                    stream: None,
                    state: State::Dead,
                    verifier,
                };
                match self.start_connect(i) {
                    Ok(mut s) => {
                        self.poll
                            .registry()
                            .register(&mut s, Token(i), Interest::WRITABLE)?;
                        slot.stream = Some(s);
                        slot.state = State::Connecting(Instant::now());
                        pending.push_back(i);
                        in_progress += 1;
                    }
                    Err(e) => self.fail_connect(&e),
                }
                self.slots.push(slot);
            }
            let wait = pending
                .front()
                .and_then(|&i| match self.slots[i].state {
                    State::Connecting(t) => {
                        Some((t + self.config.timeout).saturating_duration_since(Instant::now()))
                    }
                    _ => None,
                })
                .unwrap_or(Duration::from_millis(10));
            // The accept queues are full and nothing is in progress: wait a moment
            // for the server to accept, then read them again.
            let wait = if starved {
                Duration::from_millis(1)
            } else {
                wait
            };
            for i in self.ready(wait)? {
                if !matches!(self.slots[i].state, State::Connecting(_)) {
                    continue;
                }
                in_progress -= 1;
                let stream = self.slots[i].stream.as_ref().expect("connecting stream");
                let result = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => stream.peer_addr().map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        self.slots[i].state = State::Open;
                        self.opened += 1;
                    }
                    Err(e) => {
                        self.close(i);
                        self.fail_connect(&e);
                    }
                }
            }
            // Connects that took longer than --timeout fail as ETIMEDOUT.
            let now = Instant::now();
            while let Some(&i) = pending.front() {
                match self.slots[i].state {
                    State::Connecting(t) if now.duration_since(t) >= self.config.timeout => {
                        pending.pop_front();
                        in_progress -= 1;
                        self.close(i);
                        self.fail_connect(&std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
                    }
                    State::Connecting(_) => break,
                    _ => {
                        pending.pop_front();
                    }
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, i: usize) {
        if let Some(mut s) = self.slots[i].stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.slots[i].state = State::Dead;
    }

    /// Phase 2: one verified request on every open connection, at most `in_flight`
    /// outstanding at once (see the module doc of `super`). Returns whether it ended
    /// because the server stopped answering (the rest then counted `not_tried`).
    pub(super) fn round_trip(&mut self) -> Result<bool> {
        let limit = self.config.in_flight;
        let mut next = 0;
        // Sent requests, oldest first: the front has the nearest deadline (one
        // timeout for all). Entries already finished are skipped when they reach it.
        let mut sent_order: VecDeque<usize> = VecDeque::with_capacity(limit.min(4096));
        let mut in_flight = 0usize;
        let mut last_finished = Instant::now();
        let mut stalled = false;
        loop {
            if crate::interrupt::requested() {
                // Ctrl-C: round trips in flight or untried are not errors.
                return Ok(false);
            }
            while !stalled && in_flight < limit && next < self.slots.len() {
                let i = next;
                next += 1;
                if self.slots[i].state != State::Open {
                    continue;
                }
                if self.send_request(i)? {
                    sent_order.push_back(i);
                    in_flight += 1;
                } else {
                    // Refused at once (a reset, say): the server is still there.
                    last_finished = Instant::now();
                }
            }
            while let Some(&i) = sent_order.front() {
                if matches!(self.slots[i].state, State::Waiting(_)) {
                    break;
                }
                sent_order.pop_front();
            }
            let Some(&oldest) = sent_order.front() else {
                break; // nothing in flight, and nothing left to send (or stalled)
            };
            let State::Waiting(sent) = self.slots[oldest].state else {
                unreachable!("the front of sent_order is waiting");
            };
            let deadline = sent + self.config.timeout;
            let now = Instant::now();
            if now >= deadline {
                sent_order.pop_front();
                in_flight -= 1;
                self.rtt_errors.timeout += 1;
                self.close(oldest);
                // Nothing finished since this request went out: the server has
                // stopped answering, and each untried connection would only wait
                // out its own timeout.
                stalled |= last_finished <= sent;
                continue;
            }
            for i in self.ready(deadline - now)? {
                let State::Waiting(sent) = self.slots[i].state else {
                    continue;
                };
                let done = match self.read_reply(i) {
                    Ok(None) => continue,
                    Ok(Some(done)) => {
                        let ns = done.duration_since(sent).as_nanos() as u64;
                        self.rtt.saturating_record(ns.max(1));
                        self.answered_ok += 1;
                        self.slots[i].state = State::Answered;
                        done
                    }
                    Err(kind) => {
                        match kind {
                            RttFail::Mismatch => self.rtt_errors.mismatch += 1,
                            RttFail::Closed => self.rtt_errors.closed_early += 1,
                            RttFail::Io => self.rtt_errors.io += 1,
                        }
                        self.close(i);
                        Instant::now()
                    }
                };
                in_flight -= 1;
                last_finished = done;
            }
        }
        self.not_tried(next)?;
        Ok(stalled)
    }

    /// No round trips here: the server was seen to stop answering in another
    /// process's share, so every open connection counts as `not_tried`.
    pub(super) fn skip_round_trips(&mut self) -> Result<()> {
        self.not_tried(0)
    }

    /// Open connections from `from` on were never tried: count them. They stay open
    /// and held; watch them for a close as well.
    fn not_tried(&mut self, from: usize) -> Result<()> {
        for i in from..self.slots.len() {
            if self.slots[i].state == State::Open {
                self.rtt_errors.not_tried += 1;
                let stream = self.slots[i].stream.as_mut().expect("open stream");
                self.poll
                    .registry()
                    .reregister(stream, Token(i), Interest::READABLE)?;
            }
        }
        Ok(())
    }

    /// Write connection `i`'s one request; `Ok(false)` if that failed (counted, closed).
    fn send_request(&mut self, i: usize) -> Result<bool> {
        let request: &[u8] = match self.config.service {
            Service::Echo => self.pool.payload(i as u64, 0),
            Service::Fib => &self.fib_line,
        };
        let slot = &mut self.slots[i];
        let stream = slot.stream.as_mut().expect("open stream");
        self.poll
            .registry()
            .reregister(stream, Token(i), Interest::READABLE)?;
        let sent = Instant::now();
        match stream.write(request) {
            Ok(n) if n == request.len() => {
                slot.state = State::Waiting(sent);
                return Ok(true);
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                self.rtt_errors.closed_early += 1;
            }
            // A fresh socket's buffer takes a whole small request: a short write is
            // as broken as an error.
            Ok(_) | Err(_) => self.rtt_errors.io += 1,
        }
        self.close(i);
        Ok(false)
    }

    /// Read what is there; `Ok(Some(when))` once the one reply is complete.
    fn read_reply(&mut self, i: usize) -> Result<Option<Instant>, RttFail> {
        let slot = &mut self.slots[i];
        let stream = slot.stream.as_mut().ok_or(RttFail::Io)?;
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => return Err(RttFail::Closed),
                Ok(n) => match slot.verifier.feed(&self.buf[..n], 1) {
                    // Complete: stop here rather than read again for EAGAIN (a close
                    // that came with the reply is seen when the hold phase starts).
                    Ok(k) if k > 0 => return Ok(Some(Instant::now())),
                    Ok(_) => {}
                    Err(_) => return Err(RttFail::Mismatch),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Err(RttFail::Closed);
                }
                Err(_) => return Err(RttFail::Io),
            }
        }
    }

    /// Phase 3: keep everything open until `end` (`None`: no end of its own), until
    /// `stop` becomes readable (a spread child's standard input, closed by its
    /// parent), or until the server has closed every connection; count what the
    /// server closes. `sample` runs about every 100 ms (to read /proc).
    pub(super) fn hold(
        &mut self,
        end: Option<Instant>,
        stop: Option<RawFd>,
        mut sample: impl FnMut(),
    ) -> Result<Ended> {
        if let Some(fd) = stop {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), STOP, Interest::READABLE)?;
        }
        // A close that arrived during the round trip phase already used its epoll
        // edge: look at every held connection once.
        for i in 0..self.slots.len() {
            self.check_closed(i);
        }
        sample();
        loop {
            if crate::interrupt::requested() {
                return Ok(Ended::Interrupted);
            }
            if self.slots.iter().all(|s| s.stream.is_none()) {
                return Ok(Ended::Empty);
            }
            let now = Instant::now();
            if end.is_some_and(|end| now >= end) {
                return Ok(Ended::Time);
            }
            let wait = end.map_or(Duration::from_millis(100), |end| {
                (end - now).min(Duration::from_millis(100))
            });
            let mut stopped = false;
            for i in self.ready(wait)? {
                if i == STOP.0 {
                    stopped = true;
                } else {
                    self.check_closed(i);
                }
            }
            if stopped {
                return Ok(Ended::Stopped);
            }
            sample();
        }
    }
}

/// Why the hold phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// `--duration` is over.
    Time,
    /// The stop descriptor became readable.
    Stopped,
    /// The server closed every connection: nothing is left to hold.
    Empty,
    /// Ctrl-C (or, in a spread child, its parent's SIGTERM).
    Interrupted,
}

impl Hold<'_> {
    /// Wait up to `wait` for events; the slots they name. A signal interrupting the
    /// wait gives none: every caller loops and re-checks its clock anyway.
    fn ready(&mut self, wait: Duration) -> Result<Vec<usize>> {
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => Ok(self.events.iter().map(|e| e.token().0).collect()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Count a held connection (answered, or never tried) the server has closed.
    fn check_closed(&mut self, i: usize) {
        if !matches!(self.slots[i].state, State::Answered | State::Open) {
            return;
        }
        let closed = match self.slots[i].stream.as_mut().map(|s| s.read(&mut self.buf)) {
            Some(Ok(0)) => true,
            Some(Err(e)) => e.kind() != ErrorKind::WouldBlock,
            _ => false,
        };
        if closed {
            self.closed_while_holding += 1;
            self.close(i);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum RttFail {
    Mismatch,
    Closed,
    Io,
}
