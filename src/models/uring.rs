//! `uring`: one thread, a completion loop on io_uring, Linux's counterpart of
//! Windows' IOCP (the talk's third scalable mechanism).
//!
//! ```python
//! submit(accept(listener))
//! while True:
//!     for done in wait_for_completions():      # not "ready", but "finished"
//!         if done.op == accept: submit(recv(done.client)); submit(accept(listener))
//!         if done.op == recv:   feed(done.data); submit(send(replies)); submit(recv(...))
//!         if done.op == send:   submit(send(rest)) or nothing
//! ```
//!
//! `select` and `epoll` ask "which sockets are ready?" and then do the reads and
//! writes themselves, one system call each. Here the loop hands the kernel the
//! operations themselves (accept, recv, send) in a shared submission ring and later
//! reaps their results from a completion ring: one io_uring_enter(2) per turn
//! submits every new operation and waits for the next results, however many.
//!
//! Each client keeps one multishot recv armed (it completes once per chunk of input
//! and stays armed), cancelled while the client's unsent replies are over the
//! bound and re-armed after, so a request costs one recv completion, one send
//! submission and its completion, and the return of the buffer.
//!
//! Memory: a recv in flight needs a buffer, and an idle client always has a recv in
//! flight, so a per-client buffer would cost 16 KiB per idle connection. Instead the
//! recvs take their buffer from a ring of buffers the loop lends the kernel
//! ([`BUFFERS`] x 16 KiB, touched only as used): the kernel picks one only when
//! data arrives, and the loop gives it back as soon as the data is fed to the
//! protocol. A send's bytes must stay put until it completes, so the send takes
//! the [`Conn`]'s buffer of replies itself ([`Conn::take_unsent`]: no copy) and
//! hands it back when done ([`Conn::reuse`]), so a request allocates nothing and
//! an idle client keeps one small buffer; the client is never closed with an
//! operation in flight: closing cancels its recv first.
//!
//! fib runs inline on the loop's thread, as in the talk, unless `--offload`.
//!
//! Before anything is bound, [`available`] probes the kernel for what the loop
//! uses: io_uring itself (it may be disabled: ENOSYS, EPERM), the buffer ring
//! (Linux 5.19) and the multishot recv (Linux 6.0), trying each for real; if one is
//! missing the model exits with status 2 and one line saying which.
//!
//! The loop's life outside its clients (admitting under `--max-conns`, the EMFILE
//! back-off, stopping with a grace period) is the [`Lifecycle`] select and epoll
//! share; here a timeout operation every [`SWEEP`] is the sweep that checks
//! deadlines and resumes a paused accept.
//!
//! Cost per connection: the client entry with its [`Conn`] and the one small reply
//! buffer: about 450 bytes resident per idle connection (measured with 10,000
//! held), plus the kernel's poll entry for the armed recv. Ceiling: the descriptor
//! limit and `--max-conns`.
//!
//! Cost per request (docs/uring-profile.md, `benches/profile.sh`): one send
//! submitted, two completions, one io_uring_enter per about 35 requests, no
//! allocation; about 85% of the CPU is the kernel's TCP work for the receive and
//! the send, as in the C epoll reference, so the two end up level.

use crate::serve::accept::ConnToken;
use crate::serve::conn::{Conn, READ_SIZE, Step};
use crate::serve::lifecycle::{Lifecycle, SWEEP};
use crate::serve::{Ready, ServeConfig, Shutdown, log_closed, log_io_error, log_open};
use anyhow::Context;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;
use std::io;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

/// Submission ring entries (the completion ring has twice as many; the kernel
/// keeps overflowing completions rather than dropping them).
const ENTRIES: u32 = 1024;

/// Receive buffers in the provided group, READ_SIZE each.
pub const BUFFERS: u16 = 128;
const GROUP: u16 = 1;

// user_data: key << 3 | op. Loop-wide operations have key 0.
const OP_ACCEPT: u64 = 1;
const OP_SHUTDOWN: u64 = 2;
const OP_MAILBOX: u64 = 3;
const OP_TICK: u64 = 4;
const OP_IGNORE: u64 = 5; // cancellations
const OP_RECV: u64 = 6;
const OP_SEND: u64 = 7;

/// Whether this kernel can run the loop; the error names what is missing. Each
/// feature is tried for real on a small ring: io_uring itself, a buffer ring
/// (Linux 5.19) and a multishot recv on a socket pair (Linux 6.0).
pub fn available() -> io::Result<()> {
    let mut ring = IoUring::new(4)?;
    let base = Box::leak(vec![0u8; READ_SIZE].into_boxed_slice()).as_mut_ptr();
    let mut bufs = BufRing::new(&ring, base, 1).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("buffer rings are not available (Linux 5.19+): {e}"),
        )
    })?;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let recv = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), GROUP)
        .build()
        .user_data(1);
    // SAFETY: the entry points at no memory of ours; the buffer is leaked above.
    unsafe { ring.submission().push(&recv) }.map_err(io::Error::other)?;
    io::Write::write_all(&mut b, b"x")?;
    ring.submit_and_wait(1)?;
    let done = ring.completion().next();
    let multishot = done
        .as_ref()
        .is_some_and(|c| c.result() == 1 && cqueue::more(c.flags()));
    if let Some(bid) = done.and_then(|c| cqueue::buffer_select(c.flags())) {
        bufs.give_back(bid);
    }
    if !multishot {
        return Err(io::Error::other(
            "multishot recv is not available (Linux 6.0+)",
        ));
    }
    // Dropping the ring cancels the armed recv; the leaked buffer outlives it.
    Ok(())
}

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    conn: Conn,
    /// A multishot recv is armed (it stays armed across completions).
    recv_in_flight: bool,
    /// Its cancellation was asked for (input paused, or closing).
    recv_cancelled: bool,
    /// Bytes handed to a send, from `send_off` on not yet confirmed sent.
    sending: Vec<u8>,
    send_off: usize,
    send_in_flight: bool,
    /// The in-flight send's cancellation was asked for (closing).
    send_cancelled: bool,
    /// Closing: waiting for the operations in flight to finish before closing.
    closing: bool,
    _token: ConnToken,
}

/// A completion: user data, result, flags.
type Completion = (u64, i32, u32);

/// The ring and the completions reaped early to make room for submissions.
struct Ring {
    ring: IoUring,
    backlog: Vec<Completion>,
}

impl Ring {
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to outlives the operation: the
            // provided buffers live as long as the loop (and are leaked at the end),
            // a send's bytes live in its client until the send completes, and the
            // timeout's timespec is copied by the kernel at submission.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.submit(0)?;
        }
    }

    /// Submit what is queued and wait for `want` completions. When the kernel is
    /// busy (EBUSY: completions it could not post yet; EAGAIN: out of memory for
    /// the moment) the completions are moved to the backlog to make room, and the
    /// submission is tried again: they are handled on the loop's next turn.
    fn submit(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    let before = self.backlog.len();
                    self.reap();
                    if self.backlog.len() == before {
                        std::thread::yield_now(); // nothing to make room with: retry
                    }
                    if want > 0 && !self.backlog.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Move every posted completion to the backlog.
    fn reap(&mut self) {
        self.backlog.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }
}

/// The receive buffers, lent to the kernel through a buffer ring: a ring of
/// (address, length, id) entries in memory shared with the kernel. The kernel takes
/// an entry when a recv has data; giving a buffer back is a write here and a
/// release-store of the tail, with no system call and no submission.
struct BufRing {
    entries: *mut types::BufRingEntry,
    base: *mut u8,
    tail: u16,
    /// Entries in the ring (a power of two), one per buffer.
    count: u16,
}

impl BufRing {
    /// `count` buffers of READ_SIZE at `base` (a power of two).
    fn new(ring: &IoUring, base: *mut u8, count: u16) -> std::io::Result<BufRing> {
        let size = count as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: a fresh anonymous mapping (page-aligned, zeroed), checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            entries: ptr.cast(),
            base,
            tail: 0,
            count,
        };
        for bid in 0..count {
            bufs.give_back(bid);
        }
        // SAFETY: the ring memory is page-aligned, `count` (a power of two) entries
        // long and lives as long as the process (never unmapped).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, count, GROUP, 0)
        }?;
        Ok(bufs)
    }

    /// Lend buffer `bid` to the kernel (again).
    fn give_back(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `slot` is within the ring; `bid` within the leaked buffers. Only
        // addr, len and bid are written: entry 0's `resv` is the kernel's tail.
        unsafe {
            let entry = &mut *self.entries.add(slot);
            entry.set_addr(self.base.add(bid as usize * READ_SIZE) as u64);
            entry.set_len(READ_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of entry 0, a u16 the kernel reads with acquire.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

fn ud(key: usize, op: u64) -> u64 {
    ((key as u64) << 3) | op
}

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(ENTRIES)
        .or_else(|_| IoUring::new(ENTRIES))
        .map_err(|e| {
            crate::error::bad_input(format!("io_uring is not available on this kernel: {e}"))
        })?;
    let mut ring = Ring {
        ring,
        backlog: Vec::new(),
    };
    // io_uring waits for a blocking socket itself; a non-blocking one could make
    // older kernels return EAGAIN instead.
    listener
        .set_nonblocking(false)
        .context("making the listener blocking")?;
    let pool = crate::serve::offload_pool(cfg)?;
    let mut life = Lifecycle::new(
        cfg,
        crate::serve::accept::Gate::new(cfg.max_conns),
        pool.as_ref(),
    )?;
    let buffers = vec![0u8; BUFFERS as usize * READ_SIZE].into_boxed_slice();
    let base = Box::leak(buffers).as_mut_ptr(); // the kernel may hold it to the very end
    let tick = types::Timespec::from(SWEEP);

    let mut bufs = BufRing::new(&ring.ring, base, BUFFERS).map_err(|e| {
        crate::error::bad_input(format!(
            "io_uring buffer rings are not available on this kernel (Linux 5.19+): {e}"
        ))
    })?;
    ring.push(
        opcode::PollAdd::new(types::Fd(shutdown.raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(ud(0, OP_SHUTDOWN)),
    )?;
    let accept = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build()
    .user_data(ud(0, OP_ACCEPT));
    ring.push(accept.clone())?;
    ring.push(
        opcode::Timeout::new(&tick)
            .build()
            .user_data(ud(0, OP_TICK)),
    )?;
    let watch_mailbox = life.mailbox().map(|m| {
        opcode::PollAdd::new(types::Fd(m.fd().as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(ud(0, OP_MAILBOX))
    });
    if let Some(entry) = &watch_mailbox {
        ring.push(entry.clone())?;
    }

    let mut clients: Slab<Client> = Slab::new();
    let mut done: Vec<Completion> = Vec::with_capacity(ENTRIES as usize);
    let mut touched: Vec<usize> = Vec::new();
    ready.announce()?;
    loop {
        // Completions reaped early (see Ring::submit) are handled without waiting.
        let want = if ring.backlog.is_empty() { 1 } else { 0 };
        ring.submit(want).context("io_uring_enter")?;
        ring.reap();
        done.clear();
        std::mem::swap(&mut done, &mut ring.backlog);
        let now = Instant::now();
        for &(data, res, flags) in &done {
            let key = (data >> 3) as usize;
            match data & 7 {
                OP_SHUTDOWN if life.stop(now) => {
                    ring.push(
                        opcode::AsyncCancel::new(ud(0, OP_ACCEPT))
                            .build()
                            .user_data(ud(0, OP_IGNORE)),
                    )?;
                    for (key, c) in clients.iter_mut() {
                        c.conn.stop();
                        touched.push(key);
                    }
                }
                OP_ACCEPT => {
                    if res >= 0 {
                        // SAFETY: a successful accept returns a new descriptor we own.
                        let stream = unsafe { TcpStream::from_raw_fd(res) };
                        if let Some(c) = life.admit(stream) {
                            log_open(&c.addr);
                            let entry = clients.vacant_entry();
                            let key = entry.key();
                            entry.insert(Client {
                                stream: c.stream,
                                addr: c.addr,
                                conn: life.conn(key),
                                recv_in_flight: false,
                                recv_cancelled: false,
                                sending: Vec::new(),
                                send_off: 0,
                                send_in_flight: false,
                                send_cancelled: false,
                                closing: false,
                                _token: c.token,
                            });
                            touched.push(key);
                        }
                    } else if res != -libc::ECANCELED {
                        life.accept_failed(&io::Error::from_raw_os_error(-res), now);
                    }
                    if life.accepting(now) {
                        ring.push(accept.clone())?;
                    }
                }
                OP_TICK => {
                    if life.resume_accepting(now) {
                        ring.push(accept.clone())?;
                    }
                    touched.extend(clients.iter().map(|(key, _)| key));
                    ring.push(
                        opcode::Timeout::new(&tick)
                            .build()
                            .user_data(ud(0, OP_TICK)),
                    )?;
                }
                OP_MAILBOX => {
                    for d in life.finished_jobs() {
                        if let Some(c) = clients.get_mut(d.key)
                            && c.conn.completed(d.id, d.reply)
                        {
                            touched.push(d.key);
                        }
                    }
                    if let Some(entry) = &watch_mailbox {
                        ring.push(entry.clone())?;
                    }
                }
                OP_RECV => {
                    // A buffer the kernel picked goes back to the group whatever happens.
                    let buf = cqueue::buffer_select(flags).map(|bid| {
                        // SAFETY: buffer `bid` lies within the leaked allocation and the
                        // kernel wrote `res` bytes into it; it is ours until given back.
                        let data = unsafe {
                            std::slice::from_raw_parts(
                                base.add(bid as usize * READ_SIZE),
                                res.max(0) as usize,
                            )
                        };
                        (bid, data)
                    });
                    if let Some(c) = clients.get_mut(key) {
                        c.recv_in_flight &= cqueue::more(flags);
                        match res {
                            0 => c.conn.received_eof(),
                            n if n > 0 => {
                                if let Some((_, data)) = buf {
                                    c.conn.received_at(data, now);
                                }
                            }
                            e if matches!(
                                -e,
                                libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN
                            ) => {}
                            e => fail(c, e),
                        }
                        touched.push(key);
                    }
                    if let Some((bid, _)) = buf {
                        bufs.give_back(bid);
                    }
                }
                OP_SEND => {
                    if let Some(c) = clients.get_mut(key) {
                        c.send_in_flight = false;
                        c.send_cancelled = false;
                        match res {
                            n if n >= 0 => {
                                c.send_off += n as usize;
                                c.conn.confirmed(n as usize, now); // for the idle timeout
                            }
                            e if matches!(-e, libc::EINTR | libc::EAGAIN) => {}
                            e if -e == libc::ECANCELED => c.closing = true,
                            e => fail(c, e),
                        }
                        touched.push(key);
                    }
                }
                _ => {} // OP_IGNORE
            }
        }

        touched.sort_unstable();
        touched.dedup();
        for key in touched.drain(..) {
            sync(&mut ring, &mut clients, key, now)?;
        }
        life.sweep_due(now); // the tick is this loop's sweep

        if life.finished(now, clients.is_empty()) {
            break;
        }
    }
    // Closing the ring cancels what is still in flight; the clients' send buffers may
    // be read until then, so they are leaked rather than freed under the kernel.
    drop(ring);
    for c in clients.drain() {
        std::mem::forget(c.sending);
    }
    Ok(())
}

/// An operation failed with `-errno`: log it and close the connection.
fn fail(c: &mut Client, errno: i32) {
    log_io_error(&c.addr, &io::Error::from_raw_os_error(-errno));
    c.closing = true;
}

/// Bring one client's operations in line with what its connection wants: send what
/// is owed, keep a recv in flight while it wants input, act on its next step, and
/// close it once nothing is in flight.
fn sync(ring: &mut Ring, clients: &mut Slab<Client>, key: usize, now: Instant) -> io::Result<()> {
    let Some(c) = clients.get_mut(key) else {
        return Ok(());
    };
    let fd = types::Fd(c.stream.as_raw_fd());
    if c.send_in_flight && c.conn.idle_expired(now) {
        tracing::info!("closing an idle connection (--idle-timeout)");
        c.closing = true; // a client that stopped reading: its send never completes
    }
    if !c.closing {
        for _ in 0..2 {
            if !c.send_in_flight {
                if c.send_off == c.sending.len() {
                    // The last send is over: its buffer goes back to the connection.
                    c.conn.reuse(std::mem::take(&mut c.sending));
                    c.send_off = 0;
                    if c.conn.wants_write() {
                        c.sending = c.conn.take_unsent(); // the replies' own buffer, no copy
                    }
                }
                if c.send_off < c.sending.len() {
                    let rest = &c.sending[c.send_off..];
                    ring.push(
                        opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
                            .flags(libc::MSG_NOSIGNAL)
                            .build()
                            .user_data(ud(key, OP_SEND)),
                    )?;
                    c.send_in_flight = true;
                }
            }
            if !c.recv_in_flight && c.conn.wants_read() {
                ring.push(
                    opcode::RecvMulti::new(fd, GROUP)
                        .build()
                        .user_data(ud(key, OP_RECV)),
                )?;
                c.recv_in_flight = true;
                c.recv_cancelled = false;
            } else if c.recv_in_flight && !c.conn.wants_read() && !c.recv_cancelled {
                // Too many replies unsent (or no more input wanted): stop receiving.
                // Data already on its way is still fed in; the bound overshoots by
                // at most a few reads.
                ring.push(
                    opcode::AsyncCancel::new(ud(key, OP_RECV))
                        .build()
                        .user_data(ud(0, OP_IGNORE)),
                )?;
                c.recv_cancelled = true;
            }
            if c.send_in_flight {
                break;
            }
            match c.conn.step(now) {
                Step::Wait => break,
                Step::ShutdownWrite => {
                    // Now lingering: the next round keeps a recv in flight to discard input.
                    if let Err(e) = c.stream.shutdown(Direction::Write) {
                        log_io_error(&c.addr, &e);
                        c.closing = true;
                        break;
                    }
                }
                Step::Close => {
                    c.closing = true;
                    break;
                }
            }
        }
    }
    if c.closing {
        // Cancel each operation in flight once; its completion comes back later.
        for (op, in_flight, cancelled) in [
            (OP_RECV, c.recv_in_flight, &mut c.recv_cancelled),
            (OP_SEND, c.send_in_flight, &mut c.send_cancelled),
        ] {
            if in_flight && !*cancelled {
                ring.push(
                    opcode::AsyncCancel::new(ud(key, op))
                        .build()
                        .user_data(ud(0, OP_IGNORE)),
                )?;
                *cancelled = true;
            }
        }
        if !c.recv_in_flight && !c.send_in_flight {
            log_closed(&clients.remove(key).addr);
        }
    }
    Ok(())
}
