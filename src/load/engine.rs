//! The I/O of `concur load`: a few threads, each one mio (epoll) loop.
//!
//! Why this shape: a load generator must spend less CPU per request than the server
//! it measures, or it measures itself. A thread per connection would pay a context
//! switch per reply; async tasks pay a wake-up and a queue. Here each thread owns its
//! share of the connections and does, per wake-up, only what the kernel reported:
//!
//! - **Read** into one reusable 64 KiB buffer, feed the bytes to the connection's
//!   verifier ([`super::verify`]), and record one latency per completed request into
//!   the thread's HDR histogram. A short read means the socket is drained (epoll is
//!   edge-triggered: more data makes a new edge), which saves the `EAGAIN` read.
//! - **Write** the next requests into the connection's reusable write buffer, all of
//!   them in one `write` (pipelining), and ask for nothing until the kernel says
//!   writable again. The writes of one wake-up go out together after all its reads,
//!   so the server is woken once per burst rather than once per reply.
//! - Reads and writes are bare `recvfrom`/`sendto` system calls, and on loopback the
//!   client's sockets use reno congestion control: on a 2-core machine, perf showed
//!   glibc's cancellation bookkeeping and bbr's per-ACK work as the client's largest
//!   costs that measure nothing about the server.
//! - Nothing is allocated per request: payloads are windows into a shared pool, and
//!   the in-flight send times live in a ring sized to `--pipeline`.
//!
//! Closed loop sends a request when a reply completes. Open loop (`--rate`) gives
//! light connection `i` of `L` the schedule `start + (i + k*L)/rate` for its k-th
//! request: a request is due at that time whether or not the server kept up, waits
//! if its connection already has `--pipeline` in flight, and its latency counts from
//! the due time, less this loop's own lateness: the stamp of a request is its due
//! time plus however late the loop sent it *after* the connection was free. So time
//! the server kept the pipeline full counts (coordinated omission corrected), and the
//! loop's timer granularity does not. A timerfd wakes the loop (epoll's own timeout
//! is whole milliseconds), at most every 200 us, so high rates go out in small
//! bursts rather than one wake-up per request. Timeouts are checked by a sweep a few
//! times per `--timeout`.
//!
//! A connection whose reply goes wrong is given up at once (its requests count as
//! failed), but the thread's first one stays open for reading only, until the
//! server's line around the bad byte is whole ([`super::verify::Line`]): an `ERR`
//! line says more than its first byte. Its rest is read while the run goes on; once
//! the run ends it gets at most `LINE_WAIT` more (a line cut between two reads
//! arrives at once), and whatever came is what the report shows.
//!
//! Where the floor is: on loopback the kernel's TCP work is about 90% of this
//! client's CPU and is the same work any server does for its side of each request
//! (one receive, one send), so the client can at best match a minimal epoll server
//! per request, not undercut it by much.

use super::report::{
    CpuReport, CpuUse, ErrorCounts, FirstMismatch, HeavyReport, Latency, LoadReport,
    encode_histogram, histogram,
};
use super::verify::{EchoVerifier, FibVerifier, Mismatch, PayloadPool, Verifier};
use super::{LoadConfig, Service};
use crate::account::ServerAccount;
use crate::sys::CpuTime;
use anyhow::Result;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Read buffer per thread.
const READ_BUF: usize = 64 * 1024;

/// After the run, how long the first mismatch's line may still take to arrive whole
/// (at most `--timeout`). A server sends a line in one write; its end comes in the
/// same breath or not at all.
const LINE_WAIT: Duration = Duration::from_millis(200);

/// What every thread shares, read-only.
struct Plan {
    addr: SocketAddr,
    pool: Option<PayloadPool>,
    prefix: Arc<[u8]>,
    light_n: u32,
    heavy_n: Option<u32>,
    light_line: Vec<u8>,
    heavy_line: Vec<u8>,
    pipeline: usize,
    timeout: Duration,
    duration: Option<Duration>,
    /// Open loop: requests per second over all light connections.
    rate: Option<f64>,
    light_conns: u64,
    /// Requests left to claim (`--requests`), shared by all threads.
    budget: Option<AtomicI64>,
    /// Verified light replies so far, for the progress bar.
    progress: AtomicU64,
    /// Where the threads wait, their connections still open, while the server is read
    /// for the last time.
    closing: Closing,
}

impl Plan {
    /// Claim one light request from the budget; false once it is spent.
    #[inline]
    fn claim(&self) -> bool {
        match &self.budget {
            None => true,
            Some(b) => b.fetch_sub(1, Ordering::Relaxed) > 0,
        }
    }

    fn budget_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) <= 0)
    }
}

/// Why a connection was given up.
#[derive(Debug, Clone, Copy)]
enum Fail {
    Refused,
    Timeout,
    Mismatch,
    ClosedEarly,
    Connect,
    Io,
}

fn count(errors: &mut ErrorCounts, fail: Fail) {
    match fail {
        Fail::Refused => errors.refused += 1,
        Fail::Timeout => errors.timeout += 1,
        Fail::Mismatch => errors.mismatch += 1,
        Fail::ClosedEarly => errors.closed_early += 1,
        Fail::Connect => errors.connect += 1,
        Fail::Io => errors.io += 1,
    }
}

fn io_fail(e: &std::io::Error) -> Fail {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Fail::ClosedEarly
        }
        _ => Fail::Io,
    }
}

struct Conn {
    /// Global connection index (0 is the heavy one with `--mix`).
    index: usize,
    stream: Option<TcpStream>,
    verifier: Verifier,
    heavy: bool,
    /// Open loop: this connection's place among the light connections.
    light_index: u64,
    seed: u64,
    /// Send (closed loop) or intended send (open loop) time of each request in flight.
    inflight: VecDeque<Instant>,
    /// Requests written to `wbuf` so far.
    sent: u64,
    wbuf: Vec<u8>,
    wpos: usize,
    /// When the oldest request in flight started to wait (for `--timeout`).
    waiting_since: Instant,
    /// Open loop: when a reply last freed a slot of a full pipeline.
    free_since: Instant,
}

/// One thread's results.
struct Tally {
    light: Histogram<u64>,
    heavy: Histogram<u64>,
    ok: u64,
    heavy_ok: u64,
    /// Light requests issued, lost with a connection that failed, and still in flight
    /// when the run ended: `sent = ok + failed + unfinished`.
    sent: u64,
    failed: u64,
    unfinished: u64,
    errors: ErrorCounts,
    first_mismatch: Option<FirstMismatch>,
    bytes_sent: u64,
    bytes_received: u64,
    /// From the start to the end of the run, and to the last verified reply.
    run: Duration,
    answered: Duration,
    last_reply: Option<Instant>,
}

/// Run the whole load test: connect, run every thread's loop, merge.
pub(super) fn run(config: &LoadConfig, addr: SocketAddr) -> Result<LoadReport> {
    let plan = Plan {
        addr,
        pool: (config.service == Service::Echo)
            .then(|| PayloadPool::new(config.size, &config.prefix, fastrand::u64(..))),
        prefix: config.prefix.clone().into(),
        light_n: config.n,
        heavy_n: config.heavy,
        light_line: FibVerifier::request_line(config.n, config.question),
        heavy_line: FibVerifier::request_line(config.heavy.unwrap_or(0), config.question),
        pipeline: config.pipeline,
        timeout: config.timeout,
        duration: match (config.duration, config.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        },
        rate: config.rate,
        light_conns: (config.conns - usize::from(config.heavy.is_some())) as u64,
        budget: config.requests.map(|r| AtomicI64::new(r as i64)),
        progress: AtomicU64::new(0),
        closing: Closing::default(),
    };
    let threads = config.threads;
    let gate = Gate::default();
    let tallies = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (plan, gate) = (&plan, &gate);
            let mine: Vec<usize> = (t..config.conns).step_by(threads).collect();
            let spawned = std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn_scoped(s, move || run_thread(plan, &mine, gate));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    gate.open(None);
                    return Err(anyhow::Error::new(e).context("starting a load thread"));
                }
            }
        }
        gate.wait_for(threads);
        let start = Instant::now();
        let wall_start = SystemTime::now();
        // With --start-at, the duration counts from the time asked, not from this
        // agent's (later) start: agents given the same time and duration stop together.
        let anchor = config
            .start_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .and_then(|late| start.checked_sub(late))
            .unwrap_or(start);
        let end = plan.duration.map(|d| anchor + d);
        // The server is watched from here (its tree's counts now are the baseline)
        // to the moment every connection has finished, before any is closed.
        let mut watch = config.server_pid.and_then(crate::account::Watch::start);
        gate.open(Some(Start { at: start, end }));
        let cpu_before = crate::sys::cpu_self_and_children();
        // Its memory is read once, halfway through (or at the end of a run of
        // `--requests`).
        let halfway = plan.duration.map(|d| start + d / 2);
        let mut memory_read = false;
        let bar = config.progress.then(|| progress_bar(config));
        let started = Instant::now();
        let _release = Release(&plan.closing);
        while !plan
            .closing
            .all_arrived(threads, Duration::from_millis(100))
        {
            if let Some(w) = &mut watch
                && !memory_read
                && halfway.is_some_and(|h| Instant::now() >= h)
            {
                w.read_memory();
                memory_read = true;
            }
            if let Some(bar) = &bar {
                let verified = plan.progress.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{verified} verified, {:.0} req/s",
                    verified as f64 / secs
                ));
                bar.set_position(match config.requests {
                    Some(_) => verified,
                    None => started.elapsed().as_millis() as u64,
                });
            }
        }
        let account = watch.map(|mut w| {
            if !memory_read {
                w.read_memory();
            }
            w.finish()
        });
        plan.closing.release();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let tallies = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()?;
        // The sampler ran in this process, on the client's side: its cost is the
        // account's, not the load generator's.
        let sampler = Duration::from_secs_f64(account.as_ref().map_or(0.0, |a| a.sampler_cpu_secs));
        let mut load_cpu = crate::sys::cpu_self_and_children().since(&cpu_before);
        load_cpu.user = load_cpu.user.saturating_sub(sampler);
        Ok::<_, anyhow::Error>((tallies, load_cpu, account, wall_start))
    })?;
    let (tallies, load_cpu, account, wall_start) = tallies;
    let mut report = merge(config, tallies, wall_start);
    let requests = report.requests_ok + report.heavy.as_ref().map_or(0, |h| h.requests_ok);
    let per_request = |cpu: CpuTime| {
        let secs = cpu.total().as_secs_f64();
        CpuUse {
            secs,
            us_per_request: if requests > 0 {
                secs * 1e6 / requests as f64
            } else {
                0.0
            },
        }
    };
    report.cpu = Some(CpuReport {
        load: per_request(load_cpu),
        server: account.as_ref().and_then(|a| {
            let secs = a.cpu_secs.value?;
            Some(CpuUse {
                secs,
                us_per_request: ServerAccount::per_request(&a.cpu_secs, requests)
                    .map_or(0.0, |s| s * 1e6),
            })
        }),
    });
    report.server = account;
    Ok(report)
}

/// The bar fills with verified requests (`--requests`) or with time (`--duration`).
fn progress_bar(config: &LoadConfig) -> indicatif::ProgressBar {
    let len = match (config.requests, config.duration) {
        (Some(r), _) => r,
        (None, d) => d.unwrap_or(Duration::from_secs(10)).as_millis() as u64,
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} {msg:>32} {wide_bar}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn merge(config: &LoadConfig, tallies: Vec<Tally>, wall_start: SystemTime) -> LoadReport {
    let mut light = histogram();
    let mut heavy = histogram();
    let mut errors = ErrorCounts::default();
    let (mut ok, mut heavy_ok, mut sent, mut received) = (0, 0, 0, 0);
    let (mut issued, mut failed, mut unfinished) = (0, 0, 0);
    let mut first_mismatch = None;
    let (mut run, mut answered) = (Duration::ZERO, Duration::ZERO);
    for t in tallies {
        let _ = light.add(&t.light);
        let _ = heavy.add(&t.heavy);
        errors.add(&t.errors);
        ok += t.ok;
        heavy_ok += t.heavy_ok;
        issued += t.sent;
        failed += t.failed;
        unfinished += t.unfinished;
        sent += t.bytes_sent;
        received += t.bytes_received;
        first_mismatch = first_mismatch.or(t.first_mismatch);
        run = run.max(t.run);
        answered = answered.max(t.answered);
    }
    // The rates are over the time the server answered (see `report`'s module doc).
    let secs = answered.as_secs_f64();
    let per_sec = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
    let window_start_unix = wall_start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let (size, n, prefix) =
        crate::load::report::spoken(config.service, config.size, config.n, &config.prefix);
    LoadReport {
        addr: config.addr.clone(),
        service: match config.service {
            Service::Echo => "echo".into(),
            Service::Fib => "fib".into(),
        },
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        conns: config.conns,
        threads: config.threads,
        pipeline: config.pipeline,
        rate: config.rate,
        elapsed_secs: secs,
        run_secs: Some(run.as_secs_f64()),
        requests_ok: ok,
        requests_sent: issued,
        requests_failed: failed,
        requests_unfinished: unfinished,
        errors_total: errors.total(),
        errors,
        first_mismatch,
        req_per_s: per_sec(ok),
        mb_per_s: per_sec(received) / 1e6,
        bytes_sent: sent,
        bytes_received: received,
        latency_us: Latency::from_histogram(&light),
        cpu: None,
        server: None,
        heavy: config.heavy.map(|n| HeavyReport {
            n,
            requests_ok: heavy_ok,
            latency_us: Latency::from_histogram(&heavy),
            histogram: encode_histogram(&heavy),
        }),
        window_start_unix,
        window_end_unix: window_start_unix + secs,
        run_end_unix: Some(window_start_unix + run.as_secs_f64()),
        start_late_secs: None,
        size,
        n,
        prefix,
        question: config.service == Service::Fib && config.question,
        duration_secs: config.duration.map(|d| d.as_secs_f64()),
        requests: config.requests,
        agents: 1,
        histogram: encode_histogram(&light),
        merge_warnings: Vec::new(),
    }
}

/// Connect one socket, bounded by `--timeout`; `Ok(None)` if Ctrl-C came first.
///
/// A blocking `connect` cannot be cut short: to an address that never answers the
/// SYN (a filtered port, a full accept queue) it waits out the kernel's retries, and
/// a signal handler installed without SA_RESTART does not help, since the standard
/// library retries on EINTR. So the connect is non-blocking, and this waits for it
/// in slices of at most 100 ms, looking at the Ctrl-C flag between them, as the load
/// loops do at each wake-up.
fn connect(addr: SocketAddr, timeout: Duration) -> Result<Option<TcpStream>, Fail> {
    let failed = |e: std::io::Error| {
        if e.kind() == ErrorKind::ConnectionRefused {
            Fail::Refused
        } else {
            Fail::Connect
        }
    };
    let stream = TcpStream::connect(addr).map_err(failed)?;
    let deadline = Instant::now() + timeout;
    loop {
        if crate::interrupt::requested() {
            return Ok(None);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Fail::Connect);
        }
        // Rounded up: a wait of 0 ms would spin.
        let slice = (deadline - now).min(Duration::from_millis(100));
        let ms = slice.as_micros().div_ceil(1000) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor this function owns.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(Fail::Io);
        }
        if ready > 0 {
            break;
        }
    }
    // Writable: the handshake is over, one way or the other.
    match stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Err(failed(e)),
    }
    stream.peer_addr().map_err(failed)?;
    stream.set_nodelay(true).map_err(|_| Fail::Io)?;
    if addr.ip().is_loopback() {
        cheap_congestion_control(stream.as_raw_fd());
    }
    Ok(Some(stream))
}

/// On loopback there is no network to share, so this client's sockets use reno, the
/// cheapest congestion control, instead of the system default (often bbr, which
/// timestamps and models every ACK): about 5% less CPU per request, measured. The
/// server's sockets, and so its work, are unchanged. Failure just keeps the default.
fn cheap_congestion_control(socket: std::os::fd::RawFd) {
    let name = b"reno";
    // SAFETY: a valid socket and a byte string option value of the given length.
    unsafe {
        libc::setsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        );
    }
}

/// `recv` as a bare system call. The libc wrapper is a thread-cancellation point and
/// brackets every call with cancellation bookkeeping, about 2% of this client's CPU
/// per request; nothing here uses cancellation.
#[inline]
fn recv(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: recvfrom into a buffer we own, of its length; no address wanted.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            stream.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send` as a bare system call (see [`recv`]); `MSG_NOSIGNAL` turns a closed peer
/// into `EPIPE` instead of a signal.
#[inline]
fn send(stream: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: sendto from a buffer we own, of its length; no address given.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            stream.as_raw_fd(),
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

const TIMER: Token = Token(usize::MAX);

/// The shortest sleep of the open loop: at most 5000 timer wake-ups a second, so a
/// high rate is sent in small bursts instead of one wake-up per request.
const TIMER_GRAIN: Duration = Duration::from_micros(200);

/// A timerfd in the epoll set. epoll's own timeout has millisecond resolution (mio
/// rounds it up): at 5000 req/s that sends five requests at once every millisecond
/// instead of one every 200 us, a burstier arrival than the rate asked for.
struct Timer {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl Timer {
    fn new(poll: &Poll) -> std::io::Result<Self> {
        // SAFETY: plain syscalls; the returned descriptor is owned from here on.
        let fd = unsafe {
            let fd = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Let the kernel wake this thread on time rather than batch its timers.
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
            OwnedFd::from_raw_fd(fd)
        };
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Timer {
            fd,
            armed_for: None,
        })
    }

    /// Fire at `at` (one shot), unless already set for exactly then. Never sooner
    /// than [`TIMER_GRAIN`] from now: requests due within one grain go out together.
    fn arm(&mut self, at: Instant, now: Instant) {
        if self.armed_for == Some(at) {
            return;
        }
        let d = at.saturating_duration_since(now).max(TIMER_GRAIN);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec.
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.armed_for = Some(at);
    }

    /// Consume the expiry so the descriptor stops being readable.
    fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer.
        unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        self.armed_for = None;
    }
}

struct Loop<'a> {
    plan: &'a Plan,
    poll: Poll,
    conns: Vec<Conn>,
    tally: Tally,
    buf: Vec<u8>,
    live: usize,
    /// Live connections that are not the heavy one: with none left, a `--requests`
    /// run cannot finish, whatever the heavy connection does.
    live_light: usize,
    /// Connections read in this wake-up, to be refilled together after it.
    answered: Vec<usize>,
    light_inflight: usize,
    /// This thread's first mismatch, while the rest of its line is read.
    capture: Option<Capture>,
}

/// The first mismatch of a thread and, until its line is whole, the connection it
/// came on (given up, but still registered under its token, for reading only).
struct Capture {
    token: usize,
    conn: usize,
    stream: Option<TcpStream>,
    mismatch: Mismatch,
}

/// When the run started, on the one clock every thread shares, and when it must end.
#[derive(Debug, Clone, Copy)]
struct Start {
    at: Instant,
    end: Option<Instant>,
}

/// Where the load threads wait, connected, until every thread is (so the run starts
/// at once everywhere), or until the run is called off.
#[derive(Default)]
struct Gate {
    /// Threads arrived, and the verdict once given (`Some(start)`: go; `None`: stop).
    state: Mutex<(usize, Option<Option<Start>>)>,
    changed: Condvar,
}

impl Gate {
    /// Arrive and wait for the verdict.
    fn arrive(&self) -> Option<Start> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = g.1 {
                return go;
            }
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wait_for(&self, threads: usize) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.0 < threads {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self, go: Option<Start>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(go);
        self.changed.notify_all();
    }
}

/// The end of a run, for the last reading of the server: each thread arrives with
/// its connections still open and waits until released; a thread that ends early (or
/// panics) arrives on its way out, without waiting.
#[derive(Default)]
struct Closing {
    /// Threads arrived, and whether they are released.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Closing {
    fn arrival(&self) -> Arrival<'_> {
        Arrival {
            closing: self,
            arrived: false,
        }
    }

    /// Whether all `threads` have arrived, waiting up to `wait` for it.
    fn all_arrived(&self, threads: usize, wait: Duration) -> bool {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .changed
            .wait_timeout_while(g, wait, |g| g.0 < threads)
            .unwrap_or_else(|e| e.into_inner());
        g.0 >= threads
    }

    fn release(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

/// Releases the threads however the main thread leaves (an error, a panic).
struct Release<'a>(&'a Closing);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One thread's arrival at [`Closing`].
struct Arrival<'a> {
    closing: &'a Closing,
    arrived: bool,
}

impl Arrival<'_> {
    fn arrive(&mut self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        let mut g = self.closing.state.lock().unwrap_or_else(|e| e.into_inner());
        if !self.arrived {
            g.0 += 1;
            self.arrived = true;
            self.closing.changed.notify_all();
        }
        g
    }

    /// Arrive, and wait (connections open) until released.
    fn wait(mut self) {
        let closing = self.closing;
        let g = self.arrive();
        drop(
            closing
                .changed
                .wait_while(g, |g| !g.1)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        drop(self.arrive());
    }
}

fn run_thread(plan: &Plan, mine: &[usize], gate: &Gate) -> Result<Tally> {
    let arrival = plan.closing.arrival();
    let poll = Poll::new();
    let mut tally = Tally {
        light: histogram(),
        heavy: histogram(),
        ok: 0,
        heavy_ok: 0,
        sent: 0,
        failed: 0,
        unfinished: 0,
        errors: ErrorCounts::default(),
        first_mismatch: None,
        bytes_sent: 0,
        bytes_received: 0,
        run: Duration::ZERO,
        answered: Duration::ZERO,
        last_reply: None,
    };
    let poll = match poll {
        Ok(p) => p,
        Err(e) => {
            gate.arrive();
            return Err(e.into());
        }
    };
    let now = Instant::now();
    let mut conns = Vec::with_capacity(mine.len());
    for &index in mine {
        let heavy = plan.heavy_n.is_some() && index == 0;
        let seed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let verifier = match (&plan.pool, heavy) {
            (Some(pool), _) => {
                Verifier::Echo(EchoVerifier::new(pool.clone(), seed, plan.prefix.clone()))
            }
            (None, true) => Verifier::Fib(FibVerifier::new(plan.heavy_n.unwrap_or(0))),
            (None, false) => Verifier::Fib(FibVerifier::new(plan.light_n)),
        };
        // After Ctrl-C, the connections not yet made are not tried (nor errors).
        let mut stream = if crate::interrupt::requested() {
            None
        } else {
            match connect(plan.addr, plan.timeout) {
                Ok(s) => s,
                Err(fail) => {
                    count(&mut tally.errors, fail);
                    None
                }
            }
        };
        if let Some(s) = &mut stream {
            let token = Token(conns.len());
            if poll
                .registry()
                .register(s, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                count(&mut tally.errors, Fail::Io);
                stream = None;
            }
        }
        let light_index = index.saturating_sub(usize::from(plan.heavy_n.is_some())) as u64;
        conns.push(Conn {
            index,
            stream,
            verifier,
            heavy,
            light_index,
            seed,
            inflight: VecDeque::with_capacity(plan.pipeline),
            sent: 0,
            wbuf: Vec::with_capacity(plan.pipeline * plan.pool.as_ref().map_or(24, |p| p.size())),
            wpos: 0,
            waiting_since: now,
            free_since: now,
        });
    }
    let Some(start) = gate.arrive() else {
        return Ok(tally);
    };
    let live = conns.iter().filter(|c| c.stream.is_some()).count();
    let live_light = conns
        .iter()
        .filter(|c| c.stream.is_some() && !c.heavy)
        .count();
    let mut lp = Loop {
        plan,
        poll,
        conns,
        tally,
        buf: vec![0; READ_BUF],
        live,
        live_light,
        answered: Vec::new(),
        light_inflight: 0,
        capture: None,
    };
    let run = lp.run(start);
    arrival.wait();
    run?;
    Ok(lp.tally)
}

impl Loop<'_> {
    fn run(&mut self, Start { at: start, end }: Start) -> Result<()> {
        let plan = self.plan;
        let sweep_every =
            (plan.timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let mut next_sweep = start + sweep_every;
        let mut events = Events::with_capacity(1024);
        let mut timer = if plan.rate.is_some() {
            Timer::new(&self.poll).ok()
        } else {
            None
        };
        // Closed loop: fill every pipeline now. Open loop: the schedule does it.
        for i in 0..self.conns.len() {
            if plan.rate.is_none() || self.conns[i].heavy {
                self.refill(i, start, start);
            }
        }
        let mut reported = 0;
        loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) || self.live == 0 || self.live_light == 0 {
                break;
            }
            // Ctrl-C: stop here; what was verified so far is the report.
            if crate::interrupt::requested() {
                break;
            }
            if plan.budget_spent() && self.light_inflight == 0 {
                break;
            }
            let mut wait = end.map_or(Duration::MAX, |e| e - now);
            wait = wait.min(next_sweep.saturating_duration_since(now));
            if plan.rate.is_some()
                && let Some(due) = self.send_due(start, now)
            {
                match &mut timer {
                    Some(t) => t.arm(due, now),
                    None => wait = wait.min(due.saturating_duration_since(now)),
                }
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                if i == TIMER.0 {
                    if let Some(t) = &mut timer {
                        t.clear();
                    }
                    continue;
                }
                if self.conns[i].stream.is_none() {
                    if self.capture.as_ref().is_some_and(|c| c.token == i) {
                        self.read_capture();
                    }
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(i);
                }
                if ev.is_writable() && self.conns[i].stream.is_some() {
                    self.flush(i);
                }
            }
            // The next requests go out together, after every reply of this wake-up
            // was read: one short burst of writes wakes the server once, where
            // writes spread between reads would wake it again and again.
            let now = Instant::now();
            let mut answered = std::mem::take(&mut self.answered);
            for &i in &answered {
                self.refill(i, start, now);
            }
            answered.clear();
            self.answered = answered;
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + sweep_every;
            }
            if self.tally.ok != reported {
                plan.progress
                    .fetch_add(self.tally.ok - reported, Ordering::Relaxed);
                reported = self.tally.ok;
            }
        }
        self.tally.run = start.elapsed();
        self.tally.answered = self
            .tally
            .last_reply
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
        // What is still in flight is neither verified nor failed: count it, so that
        // sent = ok + failed + unfinished holds exactly.
        self.tally.unfinished = self.light_inflight as u64;
        self.finish_capture(&mut events);
        Ok(())
    }

    /// Read what came on the first mismatch's connection into its line; close the
    /// connection once the line is done, or the server closed it or failed.
    fn read_capture(&mut self) {
        let Some(cap) = &mut self.capture else { return };
        let Some(stream) = &mut cap.stream else {
            return;
        };
        let done = loop {
            match recv(stream, &mut self.buf) {
                Ok(0) => break true,
                Ok(n) => {
                    self.tally.bytes_received += n as u64;
                    if cap.mismatch.line.more(&self.buf[..n]) {
                        break true;
                    }
                    if n < self.buf.len() {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if done && let Some(mut s) = cap.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
    }

    /// The run is over: give the first mismatch's line at most `LINE_WAIT` more
    /// (bounded by `--timeout` and Ctrl-C) to arrive whole, then record it.
    fn finish_capture(&mut self, events: &mut Events) {
        let until = Instant::now() + LINE_WAIT.min(self.plan.timeout);
        while self.capture.as_ref().is_some_and(|c| c.stream.is_some()) {
            let now = Instant::now();
            if now >= until || crate::interrupt::requested() {
                break;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            match self.poll.poll(events, Some(wait)) {
                Ok(()) => self.read_capture(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(cap) = self.capture.take() {
            let m = cap.mismatch;
            self.tally.first_mismatch = Some(FirstMismatch {
                conn: cap.conn,
                request: m.request,
                offset: m.offset,
                expected: m.expected,
                got: m.got,
                received: Some(m.line.escaped()),
                received_offset: m.line.offset,
            });
        }
    }

    /// Open loop: send every request that is due; return the next due time.
    fn send_due(&mut self, start: Instant, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.stream.is_none() || c.heavy || c.inflight.len() >= self.plan.pipeline {
                continue;
            }
            self.refill(i, start, now);
            let c = &self.conns[i];
            if c.stream.is_some() && c.inflight.len() < self.plan.pipeline {
                let due = self.due(start, c);
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Open loop: when request number `c.sent` of this connection is due.
    fn due(&self, start: Instant, c: &Conn) -> Instant {
        let rate = self.plan.rate.unwrap_or(1.0);
        let slot = c.light_index + c.sent * self.plan.light_conns;
        start + Duration::from_secs_f64(slot as f64 / rate)
    }

    /// Queue requests up to the pipeline depth (open loop: only those due by `now`),
    /// then write them.
    fn refill(&mut self, i: usize, start: Instant, now: Instant) {
        let open = self.plan.rate.is_some() && !self.conns[i].heavy;
        loop {
            let c = &self.conns[i];
            // A connection given up since it was read must not claim requests.
            if c.stream.is_none() || c.inflight.len() >= self.plan.pipeline {
                break;
            }
            let stamp = if open {
                let due = self.due(start, c);
                if due > now {
                    break;
                }
                // Count from the due time the wait the server imposed (its replies
                // kept the pipeline full past `due`), not this loop's own lateness.
                let server_wait = c.free_since.saturating_duration_since(due);
                now.checked_sub(server_wait).unwrap_or(due)
            } else {
                now
            };
            if !c.heavy && !self.plan.claim() {
                break;
            }
            let plan = self.plan;
            let c = &mut self.conns[i];
            match (&plan.pool, c.heavy) {
                (Some(pool), _) => c.wbuf.extend_from_slice(pool.payload(c.seed, c.sent)),
                (None, true) => c.wbuf.extend_from_slice(&plan.heavy_line),
                (None, false) => c.wbuf.extend_from_slice(&plan.light_line),
            }
            if c.inflight.is_empty() {
                c.waiting_since = now;
            }
            c.inflight.push_back(stamp);
            c.sent += 1;
            if !c.heavy {
                self.light_inflight += 1;
                self.tally.sent += 1;
            }
        }
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = &mut c.stream else { return };
        while c.wpos < c.wbuf.len() {
            match send(stream, &c.wbuf[c.wpos..]) {
                Ok(n) => {
                    c.wpos += n;
                    self.tally.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let fail = io_fail(&e);
                    self.fail(i, fail);
                    return;
                }
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
    }

    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = &mut c.stream else { return };
            let n = match recv(stream, &mut self.buf) {
                Ok(0) => {
                    self.fail(i, Fail::ClosedEarly);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let fail = io_fail(&e);
                    self.fail(i, fail);
                    return;
                }
            };
            self.tally.bytes_received += n as u64;
            let now = Instant::now();
            let was_full = c.inflight.len() >= self.plan.pipeline;
            match c.verifier.feed(&self.buf[..n], c.sent) {
                Ok(done) => {
                    if was_full && done > 0 {
                        c.free_since = now;
                    }
                    let hist = if c.heavy {
                        self.tally.heavy_ok += done;
                        &mut self.tally.heavy
                    } else {
                        self.tally.ok += done;
                        self.light_inflight -= done as usize;
                        &mut self.tally.light
                    };
                    for _ in 0..done {
                        if let Some(t) = c.inflight.pop_front() {
                            let ns = now.saturating_duration_since(t).as_nanos() as u64;
                            hist.saturating_record(ns.max(1));
                        }
                    }
                    if done > 0 {
                        c.waiting_since = now;
                        self.tally.last_reply = Some(now);
                    }
                }
                Err(m) => {
                    if self.capture.is_none() {
                        // Keep the connection (for reading only) until the server's
                        // line is whole; `fail` closes only what it still holds.
                        let stream = if m.line.done() { None } else { c.stream.take() };
                        self.capture = Some(Capture {
                            token: i,
                            conn: c.index,
                            stream,
                            mismatch: m,
                        });
                    }
                    self.fail(i, Fail::Mismatch);
                    return;
                }
            }
            if n < self.buf.len() {
                break;
            }
        }
        self.answered.push(i);
    }

    /// Give a connection up: count why (one error per connection) and every request
    /// it had in flight (each one lost), then close it.
    fn fail(&mut self, i: usize, fail: Fail) {
        count(&mut self.tally.errors, fail);
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if !c.heavy {
            self.light_inflight -= c.inflight.len();
            self.tally.failed += c.inflight.len() as u64;
        }
        c.inflight.clear();
        self.live -= 1;
        if !c.heavy {
            self.live_light -= 1;
        }
    }

    fn sweep(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.stream.is_some()
                && !c.inflight.is_empty()
                && now.saturating_duration_since(c.waiting_since) > self.plan.timeout
            {
                self.fail(i, Fail::Timeout);
            }
        }
    }
}
