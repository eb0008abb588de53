//! `--offload`: an event loop hands fib to a worker pool and goes on serving.
//!
//! The talk's event loops compute fib inline, so one client's fib(40) stalls every
//! other client. With `--offload` the pieces are:
//!
//! - [`Pool`]: `--workers` threads (`offload-N`) computing [`Job`]s;
//! - [`Lane`]: one connection's place in the pool: its own queue of jobs. Dropping
//!   it (the connection closed) drops the jobs still queued; a running one finishes
//!   and its reply is thrown away;
//! - [`Mailbox`]: one per event loop: finished jobs land here and an eventfd
//!   becomes readable, which wakes the loop (mio registers it, select(2) and
//!   io_uring poll it). `async` needs no mailbox: each job's reply comes back
//!   through a tokio oneshot channel the connection's task awaits ([`Lane::submit`]);
//! - [`Handle`]: what an event loop's connection holds to submit a job whose reply
//!   goes to its loop's mailbox, tagged with its loop key;
//! - [`Ordered`]: the one sink every offloading connection feeds its session into
//!   (event loops inside [`super::conn::Conn`], `async` in its task): it keeps each
//!   job's place in the reply order, and [`Ordered::complete`] (a mailbox reply) or
//!   [`Ordered::take_next`] (an awaited channel) fills it in, so replies on one
//!   connection come back in request order whichever job finishes first.
//!
//! Bounded: a connection has at most [`MAX_JOBS_PER_CONN`] jobs queued or running.
//! Its sink then reports itself full, the protocol session stops parsing before the
//! next request and keeps the rest of the input, and the loop stops reading from
//! that client (the kernel's flow control pushes back on it); a finished job makes
//! room and parsing resumes. So one pipelined read of thousands of `42\n` costs a
//! few jobs, not thousands, and nothing keeps computing for a client that is gone.
//!
//! Fair: the pool does not serve one global FIFO, where a client's fib(20) would
//! wait behind another client's backlog. A free worker takes the next job of the
//! connection with the fewest jobs running, and among those the one that has waited
//! longest (round robin). A client with nothing running is served by the next worker
//! that frees up: it waits for the jobs already running, never for queued ones. And
//! no one starves: a connection passed over has at least as many jobs running as
//! the one served instead, so the workers are shared out evenly among connections
//! with work (max-min fairness), and a connection's own jobs run in order.
//!
//! Jobs up to fib([`INLINE_MAX_N`]) stay inline: cheaper than the hand-off.
//!
//! Job ids are unique for the life of the process, so a reply for a connection that
//! has gone (and whose key may have been reused) is recognised and dropped.

use crate::protocol::{Job, Sink};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Job ids and lane ids (one counter: both only need to be unique).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// fib(n) up to this n is computed inline even with `--offload`: it takes a few
/// microseconds, less than handing it to another thread and back.
pub const INLINE_MAX_N: u32 = 16;

/// Jobs one connection may have queued or running at once. Enough to keep a
/// pipelining client's share of the workers busy while its replies travel; few
/// enough that its backlog is a handful of jobs. Past it the connection's input
/// waits, unparsed.
pub const MAX_JOBS_PER_CONN: usize = 4;

/// A finished job: the connection's loop key, the job id, the reply bytes.
#[derive(Debug)]
pub struct Done {
    pub key: usize,
    pub id: u64,
    pub reply: Vec<u8>,
}

/// Where one event loop's finished jobs wait; its eventfd is readable while any do.
#[derive(Debug)]
pub struct Mailbox {
    done: Mutex<Vec<Done>>,
    efd: OwnedFd,
}

impl Mailbox {
    pub fn new() -> io::Result<Arc<Mailbox>> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Mailbox {
            done: Mutex::new(Vec::new()),
            // SAFETY: `fd` is a fresh descriptor we own.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// The eventfd the loop waits on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Reset the eventfd, then take every finished job. (In this order: a job that
    /// finishes after the take writes the eventfd again, so none is missed.)
    pub fn take(&self) -> Vec<Done> {
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a u64 from our own eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&raw mut counter).cast(), 8) };
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn post(&self, done: Done) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(done);
        let one = 1u64;
        // SAFETY: writing 8 bytes from a u64 to our own eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// Where a finished job's reply goes.
enum ReplyTo {
    /// An event loop's mailbox, tagged with the connection's key and the job id.
    Mailbox {
        mailbox: Arc<Mailbox>,
        key: usize,
        id: u64,
    },
    /// An async task awaiting this one job.
    Task(oneshot::Sender<Vec<u8>>),
}

struct Task {
    job: Job,
    reply_to: ReplyTo,
}

impl Task {
    /// Compute the job's reply (on the calling thread).
    fn compute(&self) -> Vec<u8> {
        let mut reply = Vec::new();
        self.job.run(&mut reply);
        reply
    }

    /// Hand the reply over (dropped if nobody waits any more).
    fn deliver(self, reply: Vec<u8>) {
        match self.reply_to {
            ReplyTo::Mailbox { mailbox, key, id } => mailbox.post(Done { key, id, reply }),
            ReplyTo::Task(tx) => drop(tx.send(reply)),
        }
    }
}

/// One connection's state in the scheduler.
#[derive(Default)]
struct LaneState {
    queue: VecDeque<Task>,
    running: usize,
    /// The ticket of its one valid entry in [`Sched::ready`] while it has queued jobs.
    ticket: u64,
}

/// Which job a free worker takes: the pool's whole state, without threads (so it is
/// tested on its own). Lanes with queued jobs wait in `ready[r]`, `r` being how many
/// of their jobs run now; a worker takes the front lane of the lowest non-empty
/// `ready[r]`, runs its oldest job and puts it back at the end of `ready[r + 1]` if
/// it has more. When one of its jobs finishes a lane moves down a rank. Moves leave
/// a stale entry behind (its ticket no longer matches), skipped when reached: cheaper
/// than searching the queue.
#[derive(Default)]
struct Sched {
    lanes: HashMap<u64, LaneState>,
    ready: Vec<VecDeque<(u64, u64)>>,
    queued: usize,
    next_ticket: u64,
    /// The pool was dropped: workers leave once the queue is empty.
    closed: bool,
}

impl Sched {
    /// Put `lane` (which has queued jobs) at the end of the queue for its rank.
    fn make_ready(&mut self, lane: u64) {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        self.next_ticket += 1;
        state.ticket = self.next_ticket;
        if self.ready.len() <= state.running {
            self.ready.resize_with(state.running + 1, VecDeque::new);
        }
        self.ready[state.running].push_back((lane, state.ticket));
    }

    fn submit(&mut self, lane: u64, task: Task) {
        let state = self.lanes.entry(lane).or_default();
        state.queue.push_back(task);
        self.queued += 1;
        if state.queue.len() == 1 {
            self.make_ready(lane);
        }
    }

    /// The next job to run, and its lane (now counted as running one more).
    fn next(&mut self) -> Option<(u64, Task)> {
        for rank in 0..self.ready.len() {
            while let Some((lane, ticket)) = self.ready[rank].pop_front() {
                let Some(state) = self.lanes.get_mut(&lane) else {
                    continue; // the connection closed
                };
                if state.ticket != ticket {
                    continue; // moved since
                }
                let Some(task) = state.queue.pop_front() else {
                    continue;
                };
                state.running += 1;
                self.queued -= 1;
                if !state.queue.is_empty() {
                    self.make_ready(lane);
                }
                return Some((lane, task));
            }
        }
        None
    }

    /// A job of `lane` finished; whether the lane is still there (its connection
    /// open) to take the reply.
    fn finished(&mut self, lane: u64) -> bool {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return false;
        };
        state.running = state.running.saturating_sub(1);
        if !state.queue.is_empty() {
            self.make_ready(lane); // one rank down
        } else if state.running == 0 {
            self.lanes.remove(&lane); // idle: re-created by its next submit
        }
        true
    }

    /// The connection closed: forget its lane and drop its queued jobs.
    fn close(&mut self, lane: u64) -> VecDeque<Task> {
        let queue = self
            .lanes
            .remove(&lane)
            .map(|s| s.queue)
            .unwrap_or_default();
        self.queued -= queue.len();
        queue
    }
}

struct Shared {
    sched: Mutex<Sched>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker(&self) {
        let mut sched = self.lock();
        loop {
            if let Some((lane, task)) = sched.next() {
                drop(sched);
                let reply = task.compute();
                sched = self.lock();
                if sched.finished(lane) {
                    drop(sched);
                    task.deliver(reply);
                    sched = self.lock();
                }
            } else if sched.closed {
                return;
            } else {
                sched = self.work.wait(sched).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// A fixed pool of threads computing jobs, fairly across connections. Dropping it
/// lets the threads finish what is queued and exit.
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    /// Start `threads` workers (at least one), named `offload-N`.
    pub fn new(threads: usize) -> io::Result<Pool> {
        Pool::start(threads.max(1))
    }

    fn start(threads: usize) -> io::Result<Pool> {
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched::default()),
            work: Condvar::new(),
        });
        let pool = Pool {
            shared: shared.clone(),
        };
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("offload-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || shared.worker())?; // on error `pool` drops: started ones exit
        }
        Ok(pool)
    }

    /// A new connection's lane (async: replies come back through [`Lane::submit`]).
    pub fn lane(&self) -> Lane {
        Lane {
            shared: self.shared.clone(),
            id: next_id(),
        }
    }

    /// A new event-loop connection's submitter: replies go to `mailbox`, tagged `key`.
    pub fn handle(&self, mailbox: &Arc<Mailbox>, key: usize) -> Handle {
        Handle {
            lane: self.lane(),
            mailbox: mailbox.clone(),
            key,
        }
    }
}

#[cfg(test)]
impl Pool {
    /// Jobs queued, not yet running.
    pub(crate) fn queued(&self) -> usize {
        self.shared.lock().queued
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

/// One connection's queue in the pool. Dropping it drops the jobs still queued.
pub struct Lane {
    shared: Arc<Shared>,
    id: u64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lane({})", self.id)
    }
}

impl Lane {
    /// Queue `job`; its reply comes through the returned channel. (The caller keeps
    /// to [`MAX_JOBS_PER_CONN`]; the pool does not count for it.)
    pub fn submit(&self, job: Job) -> oneshot::Receiver<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.queue(Task {
            job,
            reply_to: ReplyTo::Task(tx),
        });
        rx
    }

    /// Queue a task; if the pool is gone it runs here instead, its reply delivered
    /// the same way.
    fn queue(&self, task: Task) {
        let mut sched = self.shared.lock();
        if sched.closed {
            drop(sched);
            let reply = task.compute();
            task.deliver(reply);
            return;
        }
        sched.submit(self.id, task);
        drop(sched);
        self.shared.work.notify_one();
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let dropped = self.shared.lock().close(self.id);
        drop(dropped); // outside the lock: may wake async tasks (their channels close)
    }
}

/// One event-loop connection's submitter: its lane, and where replies go.
#[derive(Debug)]
pub struct Handle {
    lane: Lane,
    mailbox: Arc<Mailbox>,
    key: usize,
}

impl Handle {
    /// Queue `job`; returns its id, which its [`Done`] will carry.
    pub fn submit(&self, job: Job) -> u64 {
        let id = next_id();
        self.lane.queue(Task {
            job,
            reply_to: ReplyTo::Mailbox {
                mailbox: self.mailbox.clone(),
                key: self.key,
                id,
            },
        });
        id
    }
}

/// How a connection hands a job to the pool, and what holds the job's place in its
/// reply order until the reply comes: a job id for an event loop ([`Handle`]: the
/// reply arrives in the loop's mailbox), a channel for an `async` task ([`Lane`]).
pub trait Submit {
    type Ticket;
    fn submit(&self, job: Job) -> Self::Ticket;
}

impl Submit for Handle {
    type Ticket = u64;
    fn submit(&self, job: Job) -> u64 {
        Handle::submit(self, job)
    }
}

impl Submit for Lane {
    type Ticket = oneshot::Receiver<Vec<u8>>;
    fn submit(&self, job: Job) -> oneshot::Receiver<Vec<u8>> {
        Lane::submit(self, job)
    }
}

/// A reply in request order: bytes, or the place of an offloaded job.
#[derive(Debug)]
pub enum Pending<T> {
    Bytes(Vec<u8>),
    Job(T),
}

/// The one ordered sink every model with `--offload` feeds its session into (the
/// event loops through [`super::conn::Conn`], `async` directly). Replies go to
/// `ready` until a job is offloaded; from then on everything queues behind it, so
/// replies on a connection leave in request order. Without a submitter (no
/// `--offload`), or for a job up to fib([`INLINE_MAX_N`]), fib runs inline.
/// Full at [`MAX_JOBS_PER_CONN`] jobs: the session stops before the next request
/// until one finishes.
#[derive(Debug)]
pub struct Ordered<S: Submit> {
    /// Replies ready to be written, in order.
    pub ready: Vec<u8>,
    queue: VecDeque<Pending<S::Ticket>>,
    /// Bytes held in `queue`.
    queued: usize,
    /// Jobs in `queue`.
    jobs: usize,
    submit: Option<S>,
}

impl<S: Submit> Ordered<S> {
    pub fn new(submit: Option<S>) -> Ordered<S> {
        Ordered {
            ready: Vec::new(),
            queue: VecDeque::new(),
            queued: 0,
            jobs: 0,
            submit,
        }
    }

    /// Whether replies wait behind an offloaded job.
    pub fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes waiting behind offloaded jobs.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Offloaded jobs not yet answered.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// The job whose ticket `is_it` picks has answered `reply`: it takes its place,
    /// and every reply now ready moves to `ready`. False if no job matched.
    pub fn complete(&mut self, is_it: impl Fn(&S::Ticket) -> bool, reply: Vec<u8>) -> bool {
        let Some(slot) = self
            .queue
            .iter_mut()
            .find(|p| matches!(p, Pending::Job(t) if is_it(t)))
        else {
            return false;
        };
        self.queued += reply.len();
        self.jobs -= 1;
        *slot = Pending::Bytes(reply);
        while let Some(Pending::Bytes(_)) = self.queue.front() {
            if let Some(Pending::Bytes(b)) = self.queue.pop_front() {
                self.queued -= b.len();
                self.ready.extend_from_slice(&b);
            }
        }
        true
    }

    /// Take the next reply in order (for a writer that awaits each job in turn);
    /// a job taken this way no longer counts against the bound.
    pub fn take_next(&mut self) -> Option<Pending<S::Ticket>> {
        let next = self.queue.pop_front()?;
        match &next {
            Pending::Bytes(b) => self.queued -= b.len(),
            Pending::Job(_) => self.jobs -= 1,
        }
        Some(next)
    }
}

impl<S: Submit> Sink for Ordered<S> {
    fn bytes(&mut self, data: &[u8]) {
        if self.queue.is_empty() {
            self.ready.extend_from_slice(data);
            return;
        }
        self.queued += data.len();
        match self.queue.back_mut() {
            Some(Pending::Bytes(b)) => b.extend_from_slice(data),
            _ => self.queue.push_back(Pending::Bytes(data.to_vec())),
        }
    }
    fn full(&self) -> bool {
        self.jobs >= MAX_JOBS_PER_CONN
    }
    fn job(&mut self, job: Job) {
        match &self.submit {
            Some(pool) if job.n > INLINE_MAX_N => {
                let ticket = pool.submit(job);
                self.queue.push_back(Pending::Job(ticket));
                self.jobs += 1;
            }
            _ if self.queue.is_empty() => job.run(&mut self.ready),
            _ => {
                let mut reply = Vec::new(); // cheaper than the hand-off
                job.run(&mut reply);
                self.bytes(&reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submitter that numbers jobs instead of running them.
    struct Numbered(std::cell::Cell<u32>);

    impl Submit for Numbered {
        type Ticket = u32;
        fn submit(&self, _job: Job) -> u32 {
            self.0.set(self.0.get() + 1);
            self.0.get()
        }
    }

    #[test]
    fn the_ordered_sink_keeps_request_order_and_its_bound() {
        let mut out = Ordered::new(Some(Numbered(std::cell::Cell::new(0))));
        out.job(Job { n: 1 }); // small: inline
        out.job(Job { n: 20 }); // ticket 1
        out.bytes(b"x\n");
        out.job(Job { n: 21 }); // ticket 2
        out.job(Job { n: 2 }); // inline, but behind ticket 2
        assert_eq!(out.ready, b"1\n");
        assert_eq!((out.jobs(), out.queued_bytes()), (2, 2 + 2));
        assert!(out.complete(|t| *t == 2, b"10946\n".to_vec()));
        assert_eq!(out.ready, b"1\n", "ticket 1 is still ahead");
        assert!(!out.complete(|t| *t == 7, Vec::new()), "not ours");
        assert!(out.complete(|t| *t == 1, b"6765\n".to_vec()));
        assert_eq!(out.ready, b"1\n6765\nx\n10946\n1\n");
        assert!(!out.waiting());
        assert_eq!((out.jobs(), out.queued_bytes()), (0, 0));
        for n in 30..30 + MAX_JOBS_PER_CONN as u32 {
            assert!(!out.full());
            out.job(Job { n });
        }
        assert!(out.full());
        assert!(matches!(out.take_next(), Some(Pending::Job(3))));
        assert!(
            !out.full(),
            "a job taken by its awaiting writer leaves the bound"
        );
    }
    use std::time::{Duration, Instant};

    /// Wait (bounded) until `want` replies are in the mailbox.
    fn collect(mailbox: &Mailbox, want: usize) -> Vec<Done> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < want && Instant::now() < deadline {
            crate::serve::shutdown::poll_readable(
                &[mailbox.fd()],
                Some(deadline.saturating_duration_since(Instant::now())),
            );
            got.extend(mailbox.take());
        }
        got
    }

    #[test]
    fn replies_arrive_in_the_mailbox_with_their_ids() {
        let pool = Pool::new(2).unwrap();
        let mailbox = Mailbox::new().unwrap();
        let h = pool.handle(&mailbox, 7);
        let a = h.submit(Job { n: 10 });
        let b = h.submit(Job { n: 1 });
        let mut got = collect(&mailbox, 2);
        got.sort_by_key(|d| d.id);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].key, got[0].id, &got[0].reply[..]),
            (7, a, &b"55\n"[..])
        );
        assert_eq!((got[1].id, &got[1].reply[..]), (b, &b"1\n"[..]));
    }

    #[test]
    fn a_lane_gets_its_replies_through_channels() {
        let pool = Pool::new(1).unwrap();
        let lane = pool.lane();
        let rx = lane.submit(Job { n: 20 });
        assert_eq!(rx.blocking_recv().unwrap(), b"6765\n");
    }

    /// A task whose job is `n`, replying into `mailbox` tagged with lane `key` and id.
    fn task(mailbox: &Arc<Mailbox>, key: usize, id: u64) -> Task {
        Task {
            job: Job { n: 1 },
            reply_to: ReplyTo::Mailbox {
                mailbox: mailbox.clone(),
                key,
                id,
            },
        }
    }

    fn key_of(t: &Task) -> (usize, u64) {
        match t.reply_to {
            ReplyTo::Mailbox { key, id, .. } => (key, id),
            ReplyTo::Task(_) => unreachable!(),
        }
    }

    #[test]
    fn a_connection_with_nothing_running_goes_first() {
        let m = Mailbox::new().unwrap();
        let mut s = Sched::default();
        for id in 1..=4 {
            s.submit(1, task(&m, 1, id)); // the flood
        }
        // Two workers take two of its jobs.
        assert_eq!(key_of(&s.next().unwrap().1), (1, 1));
        assert_eq!(key_of(&s.next().unwrap().1), (1, 2));
        s.submit(2, task(&m, 2, 10)); // another client, nothing running
        assert!(s.finished(1));
        // The first worker that frees up takes the newcomer's job, not the flood's.
        assert_eq!(key_of(&s.next().unwrap().1), (2, 10));
        assert_eq!(key_of(&s.next().unwrap().1), (1, 3));
    }

    #[test]
    fn connections_take_turns() {
        let m = Mailbox::new().unwrap();
        let mut s = Sched::default();
        for id in 0..3 {
            s.submit(1, task(&m, 1, id));
            s.submit(2, task(&m, 2, 10 + id));
            s.submit(3, task(&m, 3, 20 + id));
        }
        // One worker: run a job, finish it, take the next.
        let mut order = Vec::new();
        while let Some((lane, t)) = s.next() {
            order.push(key_of(&t).0);
            assert!(s.finished(lane));
        }
        assert_eq!(order, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
        assert_eq!(s.queued, 0);
        assert!(s.lanes.is_empty(), "idle lanes are forgotten");
    }

    #[test]
    fn closing_drops_the_queued_jobs_only() {
        let m = Mailbox::new().unwrap();
        let mut s = Sched::default();
        for id in 0..4 {
            s.submit(1, task(&m, 1, id));
        }
        s.submit(2, task(&m, 2, 10));
        let (lane, running) = s.next().unwrap();
        assert_eq!((lane, key_of(&running)), (1, (1, 0)));
        assert_eq!(s.close(1).len(), 3);
        assert!(
            !s.finished(1),
            "its running job's reply has nobody to go to"
        );
        assert_eq!(key_of(&s.next().unwrap().1), (2, 10));
        assert!(s.next().is_none());
        assert_eq!(s.queued, 0);
    }

    #[test]
    fn dropping_a_lane_drops_its_queue_in_the_pool() {
        let pool = Pool::start(0).unwrap(); // no workers: every job stays queued
        let (a, b) = (pool.lane(), pool.lane());
        let dropped: Vec<_> = (0..3).map(|_| a.submit(Job { n: 20 })).collect();
        let kept = b.submit(Job { n: 20 });
        assert_eq!(pool.shared.lock().queued, 4);
        drop(a);
        assert_eq!(pool.shared.lock().queued, 1);
        for rx in dropped {
            assert!(
                rx.blocking_recv().is_err(),
                "a dropped job's channel closes"
            );
        }
        // Once the pool is gone a job runs on the thread that submits it. (Here the
        // job still queued has no worker to run it; dropping its lane drops it.)
        drop(pool);
        assert_eq!(b.submit(Job { n: 10 }).blocking_recv().unwrap(), b"55\n");
        drop(b);
        assert!(kept.blocking_recv().is_err());
    }
}
