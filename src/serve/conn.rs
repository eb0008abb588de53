//! One client of an event loop, without the socket: its protocol session, its
//! buffer of unsent replies, and where it is in its life. The loop owns the socket
//! and does the reads and writes; [`Conn`] says what it wants next.
//!
//! The talk's select server keeps `msg_out[s] = Queue()` per socket and grows it
//! without limit. Here the buffer is bounded: once [`OUT_LIMIT`] bytes are unsent,
//! [`Conn::wants_read`] turns false, the loop stops reading from that client, and
//! the kernel's flow control pushes back on the client until it reads its replies.
//! (One read's replies may overshoot the limit: at most a few times [`READ_SIZE`].)
//!
//! Offloading (`--offload`) slots in at the sink the session feeds, the one
//! ordered sink [`Ordered`] every offloading model shares: without it `job` runs
//! fib inline, which is the talk's point about event loops; with it the job goes
//! to a worker pool ([`super::offload`]), its place in the reply order is held in
//! a queue, and [`Conn::completed`] fills it when the worker answers.
//! Offloaded jobs are bounded per connection: with
//! [`offload::MAX_JOBS_PER_CONN`] of them queued or running the sink is full, the
//! session pauses before the next request and keeps the unparsed bytes, and
//! [`Conn::wants_read`] turns false. [`Conn::completed`] makes room and resumes the
//! session itself, so a loop only has to look at the connection again after a
//! completion (which it does anyway, to send the reply).
//!
//! Memory: an idle connection keeps no buffer. The loop reads into one buffer of
//! its own, the unsent buffer is allocated only while replies wait and freed once
//! drained (unless small), and the protocol keeps at most a partial request.

use super::LINGER;
pub use super::READ_SIZE;
use super::offload::{self, Ordered};
use crate::protocol::{Flow, Session, Sink};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Unsent reply bytes past which a connection stops being read.
pub const OUT_LIMIT: usize = 1024 * 1024;

/// A drained unsent buffer up to this capacity is kept for the next reply; a larger
/// one is freed, so an idle connection holds at most this much.
const KEEP_CAPACITY: usize = 1024;

/// Reads (and writes) [`Conn::drive`] does per call before yielding to other clients.
pub const DRIVE_ROUNDS: usize = 8;

/// What an edge-triggered loop knows of a socket: whether it may have input, and
/// room for output. Set both when an event says so; [`Conn::drive`] clears them
/// when the socket would block. A new socket starts writable.
///
/// `read_closed` (EPOLLRDHUP: the peer's FIN, or an error) matters because a read
/// shorter than the buffer is taken to mean "drained": true for data, but a FIN that
/// came with the data raises no further edge, so it must be read for explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    pub readable: bool,
    pub writable: bool,
    pub read_closed: bool,
}

impl Default for Hints {
    fn default() -> Self {
        Hints {
            readable: false,
            writable: true,
            read_closed: false,
        }
    }
}

/// What the loop should do with the socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting for what [`Conn::wants_read`] / [`Conn::wants_write`] say.
    Wait,
    /// Everything owed is sent; shut down the write side (FIN) and keep
    /// discarding input until the client closes or the linger deadline passes.
    ShutdownWrite,
    /// Close the socket and forget the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// The client closed its write side: send what is owed, then close.
    Eof,
    /// Stopped reading (protocol said close, or shutdown): send what is owed, then
    /// shut down writing and linger.
    Flush,
    /// FIN sent; input is discarded until EOF or the deadline.
    Linger(Instant),
}

/// One event-loop client.
#[derive(Debug)]
pub struct Conn {
    session: Session,
    /// Replies in request order; `out.ready[sent..]` is not yet written.
    out: Ordered<offload::Handle>,
    sent: usize,
    phase: Phase,
    idle_timeout: Option<Duration>,
    last_progress: Instant,
    /// Bytes a completion-based loop took for a send the kernel has not finished
    /// ([`Conn::take_unsent`]); they count against [`OUT_LIMIT`].
    in_flight: usize,
}

impl Conn {
    pub fn new(session: Session, idle_timeout: Option<Duration>) -> Conn {
        Conn::with_offload(session, idle_timeout, None)
    }

    /// A connection whose fib jobs go to a worker pool (`--offload`).
    pub fn with_offload(
        session: Session,
        idle_timeout: Option<Duration>,
        offload: Option<offload::Handle>,
    ) -> Conn {
        Conn {
            session,
            out: Ordered::new(offload),
            sent: 0,
            phase: Phase::Open,
            idle_timeout,
            last_progress: Instant::now(),
            in_flight: 0,
        }
    }

    /// Whether the loop should read from the socket now: not while the session is
    /// paused (offloaded jobs at the limit) or the unsent replies are at the bound.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => {
                !self.session.is_paused()
                    && self.unsent().len() + self.out.queued_bytes() + self.in_flight < OUT_LIMIT
            }
            Phase::Linger(_) => true,
            Phase::Eof | Phase::Flush => false,
        }
    }

    /// Whether the loop should write to the socket now.
    pub fn wants_write(&self) -> bool {
        !self.unsent().is_empty()
    }

    /// A read returned `data` (non-empty). If the session is paused (a read that was
    /// already under way: io_uring), the bytes wait with the rest of its input.
    pub fn received(&mut self, data: &[u8]) {
        self.received_at(data, Instant::now());
    }

    /// [`Conn::received`] with the loop's clock reading (one per turn, not per read).
    pub fn received_at(&mut self, data: &[u8], now: Instant) {
        self.last_progress = now;
        if self.phase != Phase::Open {
            return; // lingering: discard
        }
        if self.session.feed(data, &mut self.out) == Flow::Close {
            self.phase = Phase::Flush;
        }
    }

    /// A read returned end of stream: the client shut down its write side. (If input
    /// is held, its replies come first; the session reports the end after them.)
    pub fn received_eof(&mut self) {
        match self.phase {
            Phase::Open => {
                self.session.eof(&mut self.out);
                self.phase = Phase::Eof;
            }
            Phase::Linger(_) => self.phase = Phase::Eof,
            Phase::Eof | Phase::Flush => {}
        }
    }

    /// An offloaded job finished: its reply takes its place in the order, every
    /// reply now ready is moved to the unsent buffer, and a paused session resumes
    /// on the held input (now that there is room for a job). False if `id` is not ours.
    pub fn completed(&mut self, id: u64, reply: Vec<u8>) -> bool {
        if !self.out.complete(|job| *job == id, reply) {
            return false;
        }
        self.last_progress = Instant::now();
        self.resume();
        true
    }

    /// Parse held input if the session paused and the sink has room now. Not once
    /// stopping (Flush): input not yet parsed then is dropped, like unread input.
    fn resume(&mut self) {
        if !matches!(self.phase, Phase::Open | Phase::Eof) || self.out.full() {
            return;
        }
        if self.session.resume(&mut self.out) == Flow::Close && self.phase == Phase::Open {
            self.phase = Phase::Flush;
        }
    }

    /// Whether replies are still owed (unsent, waiting on an offloaded job, or to
    /// requests held unparsed while the session is paused).
    pub fn owes(&self) -> bool {
        !self.unsent().is_empty()
            || self.out.waiting()
            || (matches!(self.phase, Phase::Open | Phase::Eof) && self.session.is_paused())
    }

    /// Replies waiting to be written.
    pub fn unsent(&self) -> &[u8] {
        &self.out.ready[self.sent..]
    }

    /// A write took `n` bytes of [`Conn::unsent`].
    pub fn sent(&mut self, n: usize) {
        self.sent_at(n, Instant::now());
    }

    /// [`Conn::sent`] with the loop's clock reading.
    pub fn sent_at(&mut self, n: usize, now: Instant) {
        if n > 0 {
            self.last_progress = now;
        }
        self.consume(n);
    }

    /// A completion-based loop (uring) takes every unsent byte for a send of its
    /// own, whose memory must stay put until the kernel is done with it: the buffer
    /// itself changes hands, no byte is copied. The bytes count against
    /// [`OUT_LIMIT`] until [`Conn::confirmed`], and taking them is no progress for
    /// the idle timeout: a client that never reads must still time out.
    pub fn take_unsent(&mut self) -> Vec<u8> {
        let mut taken = std::mem::take(&mut self.out.ready);
        taken.drain(..self.sent);
        self.sent = 0;
        self.in_flight += taken.len();
        taken
    }

    /// A buffer from [`Conn::take_unsent`] whose send is over: if no reply has
    /// started a buffer meanwhile and it is small, it takes the next replies, so a
    /// request allocates nothing and an idle connection holds one buffer at most.
    pub fn reuse(&mut self, mut buf: Vec<u8>) {
        if self.out.ready.capacity() == 0 && buf.capacity() <= KEEP_CAPACITY {
            buf.clear();
            self.out.ready = buf;
        }
    }

    /// The kernel sent `n` bytes [`Conn::take_unsent`] took.
    pub fn confirmed(&mut self, n: usize, now: Instant) {
        if n > 0 {
            self.last_progress = now;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// Forget the first `n` unsent bytes.
    fn consume(&mut self, n: usize) {
        self.sent += n;
        let ready = &mut self.out.ready;
        if self.sent == ready.len() {
            ready.clear();
            self.sent = 0;
            if ready.capacity() > KEEP_CAPACITY {
                *ready = Vec::new();
            }
        } else if self.sent > OUT_LIMIT / 2 {
            ready.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Whether the idle timeout has passed with no progress (and no job running).
    pub fn idle_expired(&self, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|idle| {
            now.duration_since(self.last_progress) >= idle
                && !matches!(self.phase, Phase::Linger(_))
                && self.out.jobs() == 0
        })
    }

    /// Shutdown requested: stop reading, send what is owed, close.
    pub fn stop(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Flush;
        }
    }

    /// After I/O (or a timeout), what the loop should do with the socket.
    pub fn step(&mut self, now: Instant) -> Step {
        if self.idle_expired(now) {
            tracing::info!("closing an idle connection (--idle-timeout)");
            return Step::Close;
        }
        match self.phase {
            Phase::Open => Step::Wait,
            Phase::Eof if !self.owes() => Step::Close,
            Phase::Flush if !self.owes() => {
                self.phase = Phase::Linger(now + LINGER);
                Step::ShutdownWrite
            }
            Phase::Linger(until) if now >= until => Step::Close,
            _ => Step::Wait,
        }
    }

    /// One turn of I/O on a non-blocking socket the loop found `readable` and/or
    /// `writable`: read once and feed the session, write what the socket takes (at
    /// once if the read produced replies), and say what to do next. WouldBlock and
    /// EINTR are absorbed; any other error ends the connection.
    pub fn pump(
        &mut self,
        mut socket: impl Read + Write,
        readable: bool,
        writable: bool,
        buf: &mut [u8],
        now: Instant,
    ) -> io::Result<Step> {
        let absorb = |r: io::Result<()>| match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            other => other,
        };
        if readable && self.wants_read() {
            absorb(socket.read(buf).map(|n| match n {
                0 => self.received_eof(),
                n => self.received_at(&buf[..n], now),
            }))?;
        }
        if self.wants_write() && (readable || writable) {
            absorb(socket.write(self.unsent()).map(|n| self.sent_at(n, now)))?;
        }
        Ok(self.step(now))
    }

    /// [`Conn::pump`] for an edge-triggered loop (epoll via mio, reuseport): an
    /// edge says only that something changed, so the loop keeps `hints` of what
    /// the socket may allow and this reads and writes until the socket would
    /// block, the connection wants nothing more, or [`DRIVE_ROUNDS`] reads and
    /// writes were done (fairness: one busy client cannot hold the loop). A read
    /// shorter than `buf` drained the socket (TCP), so no extra read is spent
    /// to find EAGAIN. Returns the next step and whether work is left for another
    /// turn (the loop must come back without waiting for an edge).
    pub fn drive(
        &mut self,
        mut socket: impl Read + Write,
        hints: &mut Hints,
        buf: &mut [u8],
        now: Instant,
    ) -> io::Result<(Step, bool)> {
        for _ in 0..DRIVE_ROUNDS {
            let mut progressed = false;
            if hints.readable && self.wants_read() {
                match socket.read(buf) {
                    Ok(0) => {
                        hints.readable = false;
                        self.received_eof();
                        progressed = true;
                    }
                    Ok(n) => {
                        hints.readable = n == buf.len() || hints.read_closed;
                        self.received_at(&buf[..n], now);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => hints.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progressed = true,
                    Err(e) => return Err(e),
                }
            }
            if hints.writable && self.wants_write() {
                match socket.write(self.unsent()) {
                    Ok(n) => {
                        self.sent_at(n, now);
                        hints.writable = !self.wants_write();
                        progressed |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => hints.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progressed = true,
                    Err(e) => return Err(e),
                }
            }
            if !progressed {
                return Ok((self.step(now), false));
            }
        }
        let more = (hints.readable && self.wants_read()) || (hints.writable && self.wants_write());
        Ok((self.step(now), more))
    }

    /// The latest instant the loop must wake for this connection, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Linger(until) => Some(until),
            _ => self.idle_timeout.map(|t| self.last_progress + t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServiceSpec;
    use std::collections::VecDeque;

    fn fib() -> Conn {
        Conn::new(ServiceSpec::Fib { max_n: 30 }.session(), None)
    }

    #[test]
    fn replies_then_closes_after_eof() {
        let mut c = fib();
        c.received(b"10\n2");
        assert_eq!(c.unsent(), b"55\n");
        c.received_eof();
        assert!(!c.wants_read());
        assert_eq!(
            c.unsent(),
            b"55\nERR unterminated request at end of stream\n"
        );
        assert_eq!(c.step(Instant::now()), Step::Wait);
        let n = c.unsent().len();
        c.sent(n);
        assert_eq!(c.step(Instant::now()), Step::Close);
    }

    #[test]
    fn stops_reading_past_the_limit() {
        let mut c = Conn::new(ServiceSpec::Echo { prefix: Vec::new() }.session(), None);
        let chunk = vec![b'x'; READ_SIZE];
        let mut fed = 0;
        while c.wants_read() {
            c.received(&chunk);
            fed += 1;
            assert!(fed < 1000, "never stopped reading");
        }
        assert!(c.unsent().len() >= OUT_LIMIT && c.unsent().len() < OUT_LIMIT + READ_SIZE);
        c.sent(OUT_LIMIT / 2 + 1);
        assert!(c.wants_read());
    }

    #[test]
    fn too_long_flushes_then_lingers() {
        let mut c = fib();
        c.received(&[b'1'; 100]);
        assert_eq!(c.unsent(), b"ERR request too long\n");
        assert!(!c.wants_read());
        c.sent(c.unsent().len());
        let now = Instant::now();
        assert_eq!(c.step(now), Step::ShutdownWrite);
        assert!(c.wants_read());
        c.received(b"more junk");
        assert!(c.unsent().is_empty());
        assert_eq!(c.step(now), Step::Wait);
        assert_eq!(c.step(now + LINGER), Step::Close);
    }

    #[test]
    fn pump_reads_feeds_and_writes() {
        let mut c = fib();
        let mut socket = io::Cursor::new(b"10\n".to_vec());
        let mut buf = [0u8; 64];
        let now = Instant::now();
        assert_eq!(
            c.pump(&mut socket, true, false, &mut buf, now).unwrap(),
            Step::Wait
        );
        assert_eq!(&socket.get_ref()[3..], b"55\n");
        assert!(c.unsent().is_empty());
    }

    /// A socket whose reads return the queued chunks (an empty one is EOF), then
    /// WouldBlock; writes take everything.
    struct Mock {
        reads: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Mock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let chunk = self.reads.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            buf[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    impl Write for Mock {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mock(reads: &[&[u8]]) -> Mock {
        Mock {
            reads: reads.iter().map(|r| r.to_vec()).collect(),
            written: Vec::new(),
        }
    }

    #[test]
    fn drive_trusts_a_short_read_to_have_drained_the_socket() {
        let mut c = fib();
        let mut socket = mock(&[b"10\n", b"11\n"]);
        let mut hints = Hints {
            readable: true,
            ..Hints::default()
        };
        let (step, more) = c
            .drive(&mut socket, &mut hints, &mut [0u8; 64], Instant::now())
            .unwrap();
        assert_eq!((step, more), (Step::Wait, false));
        assert_eq!(socket.written, b"55\n");
        assert_eq!(socket.reads.len(), 1, "no read after the short one");
        assert!(!hints.readable && hints.writable);
    }

    #[test]
    fn drive_reads_a_fin_that_came_with_the_data() {
        let mut c = fib();
        let mut socket = mock(&[b"10\n", b""]);
        let mut hints = Hints {
            readable: true,
            read_closed: true,
            ..Hints::default()
        };
        let (step, _) = c
            .drive(&mut socket, &mut hints, &mut [0u8; 64], Instant::now())
            .unwrap();
        assert_eq!(step, Step::Close);
        assert_eq!(socket.written, b"55\n");
    }

    #[test]
    fn idle_connection_closes() {
        let mut c = Conn::new(
            ServiceSpec::Fib { max_n: 30 }.session(),
            Some(Duration::from_secs(5)),
        );
        let now = Instant::now();
        assert_eq!(c.step(now), Step::Wait);
        assert_eq!(c.step(now + Duration::from_secs(6)), Step::Close);
    }

    #[test]
    fn offloaded_replies_keep_request_order() {
        let pool = offload::Pool::new(1).unwrap();
        let mailbox = offload::Mailbox::new().unwrap();
        let mut c = Conn::with_offload(
            ServiceSpec::Fib { max_n: 30 }.session(),
            None,
            Some(pool.handle(&mailbox, 1)),
        );
        c.received(b"1\n25\n2\nx\n25\n3\n");
        assert_eq!(c.unsent(), b"1\n", "inline until the first offloaded job");
        assert!(c.owes());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        while done.len() < 2 && Instant::now() < deadline {
            crate::serve::shutdown::poll_readable(
                &[mailbox.fd()],
                Some(Duration::from_millis(100)),
            );
            done.extend(mailbox.take());
        }
        assert_eq!(done.len(), 2);
        // Complete them in reverse: nothing moves until the first is in.
        done.sort_by_key(|d| std::cmp::Reverse(d.id));
        for d in done {
            assert!(c.completed(d.id, d.reply));
        }
        assert_eq!(
            c.unsent(),
            b"1\n75025\n1\nERR not a number: x\n75025\n2\n".as_slice()
        );
        assert!(!c.completed(12345, Vec::new()), "an unknown id is ignored");
    }

    /// Feed `c` the replies of finished jobs until nothing is owed but unsent bytes,
    /// checking the bound after each one; returns how many were completed.
    fn complete_all(c: &mut Conn, mailbox: &offload::Mailbox) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut completed = 0;
        while c.out.waiting() && Instant::now() < deadline {
            crate::serve::shutdown::poll_readable(
                &[mailbox.fd()],
                Some(Duration::from_millis(100)),
            );
            for d in mailbox.take() {
                assert!(c.completed(d.id, d.reply));
                completed += 1;
                assert!(c.out.jobs() <= offload::MAX_JOBS_PER_CONN, "over the bound");
            }
        }
        assert!(!c.out.waiting(), "jobs never finished");
        completed
    }

    fn offloading(pool: &offload::Pool, mailbox: &std::sync::Arc<offload::Mailbox>) -> Conn {
        Conn::with_offload(
            ServiceSpec::Fib { max_n: 30 }.session(),
            None,
            Some(pool.handle(mailbox, 1)),
        )
    }

    #[test]
    fn a_pipelined_flood_holds_a_few_jobs_and_resumes_on_completion() {
        let pool = offload::Pool::new(1).unwrap();
        let mailbox = offload::Mailbox::new().unwrap();
        let mut c = offloading(&pool, &mailbox);
        c.received(
            &b"20
"
            .repeat(1000),
        );
        assert_eq!(c.out.jobs(), offload::MAX_JOBS_PER_CONN);
        assert!(!c.wants_read(), "paused: not reading");
        assert_eq!(c.session.held(), 3 * (1000 - offload::MAX_JOBS_PER_CONN));
        assert!(c.owes());
        assert_eq!(complete_all(&mut c, &mailbox), 1000);
        assert!(c.wants_read(), "everything parsed: reading again");
        assert_eq!(
            c.unsent(),
            b"6765
"
            .repeat(1000)
        );
    }

    #[test]
    fn eof_while_paused_answers_every_held_request_first() {
        let pool = offload::Pool::new(1).unwrap();
        let mailbox = offload::Mailbox::new().unwrap();
        let mut c = offloading(&pool, &mailbox);
        c.received(
            b"20
20
20
20
20
20
21",
        );
        c.received_eof();
        assert_eq!(c.step(Instant::now()), Step::Wait);
        complete_all(&mut c, &mailbox);
        let mut want = b"6765
"
        .repeat(6);
        want.extend_from_slice(
            b"ERR unterminated request at end of stream
",
        );
        assert_eq!(c.unsent(), want);
        c.sent(want.len());
        assert_eq!(c.step(Instant::now()), Step::Close);
    }

    #[test]
    fn stopping_while_paused_answers_only_what_was_parsed() {
        let pool = offload::Pool::new(1).unwrap();
        let mailbox = offload::Mailbox::new().unwrap();
        let mut c = offloading(&pool, &mailbox);
        c.received(
            &b"20
"
            .repeat(10),
        );
        c.stop();
        complete_all(&mut c, &mailbox);
        assert_eq!(
            c.unsent(),
            b"6765
"
            .repeat(offload::MAX_JOBS_PER_CONN)
        );
        c.sent(c.unsent().len());
        assert_eq!(c.step(Instant::now()), Step::ShutdownWrite);
    }

    #[test]
    fn a_closed_connection_leaves_nothing_queued() {
        let pool = offload::Pool::new(1).unwrap();
        let mailbox = offload::Mailbox::new().unwrap();
        let mut c = offloading(&pool, &mailbox);
        c.received(
            &b"30
"
            .repeat(100),
        );
        assert!(pool.queued() >= offload::MAX_JOBS_PER_CONN - 1);
        drop(c);
        assert_eq!(pool.queued(), 0);
    }

    #[test]
    fn bytes_taken_count_until_confirmed() {
        let mut c = Conn::new(
            ServiceSpec::Echo { prefix: Vec::new() }.session(),
            Some(Duration::from_secs(5)),
        );
        let start = Instant::now();
        let chunk = vec![b'x'; OUT_LIMIT / 2];
        c.received_at(&chunk, start);
        let taken = c.take_unsent();
        assert_eq!(taken, chunk);
        assert!(c.unsent().is_empty());
        assert!(c.wants_read(), "half the bound is in flight");
        c.received_at(&chunk, start);
        assert!(!c.wants_read(), "unsent plus in flight reach the bound");
        let later = start + Duration::from_secs(6);
        assert_eq!(c.step(later), Step::Close, "handing off is not progress");
        c.confirmed(chunk.len(), start + Duration::from_secs(4));
        assert!(c.wants_read(), "the kernel sent them");
        assert_eq!(c.step(later), Step::Wait, "a confirmed send is progress");
    }

    #[test]
    fn a_sent_buffer_takes_the_next_replies_unless_one_started() {
        let mut c = Conn::new(ServiceSpec::Echo { prefix: Vec::new() }.session(), None);
        c.received(b"one");
        let first = c.take_unsent();
        let at = first.as_ptr();
        c.reuse(first);
        c.received(b"two");
        assert_eq!(c.unsent(), b"two");
        assert_eq!(c.unsent().as_ptr(), at, "the same memory, no allocation");
        let second = c.take_unsent();
        c.received(b"three"); // pipelined: a reply started its own buffer
        c.reuse(second);
        assert_eq!(
            c.unsent(),
            b"three",
            "the pipelined reply kept its own buffer"
        );
        assert_eq!(c.take_unsent(), b"three");
        c.received(b"four");
        c.sent(2);
        assert_eq!(c.take_unsent(), b"ur", "only what is still unsent");
    }

    #[test]
    fn stop_sends_what_is_owed() {
        let mut c = fib();
        c.received(b"1\n");
        c.stop();
        assert!(!c.wants_read());
        assert_eq!(c.step(Instant::now()), Step::Wait);
        c.sent(2);
        assert_eq!(c.step(Instant::now()), Step::ShutdownWrite);
    }
}
