//! `concur hold`: the talk's C10K question, asked directly. Can the server keep N
//! connections open at once, and still answer each one?
//!
//! Three phases, one epoll loop each, all on one thread:
//!
//! 1. **Open.** Non-blocking connects, at most `--batch` in progress at a time, each
//!    finished when epoll reports it writable (`SO_ERROR` says whether it worked).
//!    A failed connect is counted by its errno (`ECONNREFUSED`, `ETIMEDOUT`, ...).
//! 2. **Round trip.** One verified request on every open connection (the same
//!    verifiers as `concur load`), latency per connection into an HDR histogram. At
//!    most `--in-flight` round trips are outstanding at once (default 1): the next
//!    request goes out when an earlier reply is in. Writing all N requests first and
//!    reading the replies after would time mostly this loop's own N writes (tens of
//!    milliseconds at 1,000 connections against a 0.1 ms server); bounded, the figure
//!    is what one client sees while the others are held open. A server that stops
//!    answering must not cost N / `--in-flight` timeouts: once a round trip times out
//!    with no other round trip finished since it was sent, the connections not yet
//!    tried are counted as `not_tried` and the phase ends.
//! 3. **Hold.** Keep everything open for `--duration` (or until the server has closed
//!    every connection: then nothing is left to hold); a connection the server closes
//!    meanwhile is counted. Given `--server-pid`, the server's RSS, threads and children are
//!    read from /proc before opening and (at their peak) while holding, so the cost
//!    of a connection in each concurrency model is a number: a thread-per-connection
//!    server grows by a thread and a stack per connection, an event loop by a buffer.
//!
//! Limits met on the way, and how they are handled: this process's descriptor limit is
//! raised to its hard limit (and N refused with a clear message if it still does not
//! fit); one source address has only ~28k ephemeral ports toward one server, so on
//! loopback connections are spread over 127.0.0.1, 127.0.0.2, ... (`--per-source`
//! each), bound with `IP_BIND_ADDRESS_NO_PORT` so the port is picked at connect time.

use crate::error::bad_input;
use crate::load::verify::{EchoVerifier, FibVerifier, PayloadPool, Verifier};
use crate::load::{Service, parse_duration, resolve};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Descriptors kept free for everything else the process has open.
const SPARE_FDS: u64 = 64;

/// `concur hold` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// The server, HOST:PORT
    #[arg(long)]
    pub addr: String,
    /// Connections to open and hold at once
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// How long to hold them all open once opened (e.g. 10s, 500ms); 0s opens them,
    /// makes the round trips and closes them at once (a quick check that N fit)
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// The protocol of the one round trip on each connection
    #[arg(long, value_enum, default_value_t = Service::Echo)]
    pub service: Service,
    /// The server's process id: report its RSS, threads and children from /proc
    /// (the same name as on `concur load`; `--pid` still works)
    #[arg(long, visible_alias = "pid", value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Give up on a connect or a reply after this long (more than 0)
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// On loopback, connections per source address (127.0.0.1, .2, ...)
    #[arg(long, default_value_t = 20_000)]
    pub per_source: usize,
    /// Connects in progress at once
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Round trips outstanding at once; 1 (the default) times each round trip alone,
    /// as one client sees it while the others are held
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// The echo server's prefix ('' for plain echo)
    #[arg(long, default_value = crate::protocol::echo::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Wait until this time (Unix seconds or RFC 3339), then start opening connections
    #[arg(long, value_parser = crate::load::parse_start_at, value_name = "TIME")]
    pub start_at: Option<std::time::SystemTime>,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Everything a hold run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldConfig {
    pub addr: String,
    pub conns: usize,
    pub duration: Duration,
    pub service: Service,
    /// `--server-pid`: the server whose /proc entry to read.
    pub server_pid: Option<u32>,
    pub timeout: Duration,
    pub per_source: usize,
    pub batch: usize,
    /// Round trips outstanding at once.
    pub in_flight: usize,
    pub prefix: Vec<u8>,
    /// Echo payload bytes of the round trip.
    pub size: usize,
    /// The fib n of the round trip.
    pub n: u32,
    /// `--start-at`: open the first connection at this time.
    pub start_at: Option<std::time::SystemTime>,
}

impl HoldConfig {
    /// The command line's defaults.
    pub fn new(addr: impl Into<String>, conns: usize) -> Self {
        HoldConfig {
            addr: addr.into(),
            conns,
            duration: Duration::from_secs(10),
            service: Service::Echo,
            server_pid: None,
            timeout: Duration::from_secs(5),
            per_source: 20_000,
            batch: 512,
            in_flight: 1,
            prefix: crate::protocol::echo::DEFAULT_PREFIX.as_bytes().to_vec(),
            size: 16,
            n: 10,
            start_at: None,
        }
    }
}

impl HoldArgs {
    pub fn config(&self) -> HoldConfig {
        HoldConfig {
            duration: self.duration,
            service: self.service,
            server_pid: self.server_pid,
            timeout: self.timeout,
            per_source: self.per_source,
            batch: self.batch,
            in_flight: self.in_flight,
            prefix: self.prefix.as_bytes().to_vec(),
            start_at: self.start_at,
            ..HoldConfig::new(self.addr.clone(), self.conns)
        }
    }
}

/// Round-trip latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Round trips that failed, by kind (the same kinds as `concur load`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttErrors {
    pub timeout: u64,
    pub mismatch: u64,
    pub closed_early: u64,
    pub io: u64,
    /// Open connections never sent a request: a round trip had timed out with no
    /// other finished meanwhile, so the server was taken to have stopped answering.
    #[serde(default)]
    pub not_tried: u64,
}

impl RttErrors {
    pub fn total(&self) -> u64 {
        self.timeout + self.mismatch + self.closed_early + self.io + self.not_tried
    }
}

/// The server as /proc saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    pub pid: u32,
    pub rss_before_bytes: u64,
    /// The largest RSS seen while holding.
    pub rss_holding_bytes: u64,
    pub threads_before: u64,
    pub threads_holding: u64,
    pub children_before: usize,
    pub children_holding: usize,
}

/// The result of one `concur hold` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldReport {
    pub addr: String,
    pub service: String,
    /// Connections asked for.
    pub conns: usize,
    /// The bound on round trips outstanding at once (`--in-flight`).
    #[serde(default)]
    pub in_flight: usize,
    pub opened: u64,
    pub failed: u64,
    /// Failed connects by errno name, e.g. `ECONNREFUSED`.
    pub failed_by_errno: BTreeMap<String, u64>,
    /// Connections whose one round trip verified.
    pub answered_ok: u64,
    pub rtt_errors: RttErrors,
    /// Connections the server closed while they were held.
    pub closed_while_holding: u64,
    /// From the first connect to the last one finished.
    pub open_secs: f64,
    pub held_secs: f64,
    /// Source addresses used (127.0.0.1 and up on loopback).
    pub source_addrs: usize,
    /// This process's descriptor limit after raising it.
    pub fd_limit: u64,
    pub rtt_us: Rtt,
    pub server: Option<ServerStats>,
    /// The run in wall-clock time, Unix seconds: from the first connect to the end of
    /// holding, so reports of agents run together can be lined up.
    #[serde(default)]
    pub window_start_unix: f64,
    #[serde(default)]
    pub window_end_unix: f64,
    /// With `--start-at`: how late the first connect went out after the time asked.
    #[serde(default)]
    pub start_late_secs: Option<f64>,
    /// The round trip's parameters: echo payload bytes and prefix, fib n; and
    /// `--duration` in seconds.
    #[serde(default)]
    pub size: usize,
    #[serde(default)]
    pub n: u32,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub duration_secs: f64,
    /// Every verified round trip's latency (ns), in HdrHistogram's compressed V2
    /// encoding, base64 (see `load::report::encode_histogram`): percentiles of
    /// several agents come from adding these, never from averaging `rtt_us`.
    #[serde(default)]
    pub histogram: String,
    /// Ctrl-C stopped the run: the report holds what was measured until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl HoldReport {
    /// 0 only if every connection opened, answered correctly and stayed open.
    pub fn exit_code(&self) -> u8 {
        let all = self.conns as u64;
        if self.opened == all && self.answered_ok == all && self.closed_while_holding == 0 {
            0
        } else {
            1
        }
    }
}

/// `concur hold`: run, print, return the exit status: the report's, or
/// [`crate::interrupt::EXIT_CODE`] when Ctrl-C stopped the run.
pub fn run(args: &HoldArgs) -> Result<u8> {
    crate::interrupt::catch();
    let report = run_hold(&args.config())?;
    if args.json {
        crate::output::print_out(&format!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        crate::output::print_out(&render(&report))?;
    }
    Ok(if report.interrupted {
        crate::interrupt::EXIT_CODE
    } else {
        report.exit_code()
    })
}

fn server_sample(pid: u32) -> Option<(u64, u64, usize)> {
    let s = crate::sys::proc_stat(pid)?;
    Some((s.rss_bytes, s.threads, crate::sys::children(pid).len()))
}

/// Open, verify and hold `conns` connections; see the module doc.
pub fn run_hold(config: &HoldConfig) -> Result<HoldReport> {
    if config.conns == 0 || config.batch == 0 || config.per_source == 0 || config.in_flight == 0 {
        return Err(bad_input(
            "--conns, --batch, --per-source and --in-flight must be at least 1",
        ));
    }
    if config.n > crate::load::MAX_FIB_N || config.size == 0 {
        return Err(bad_input("bad round-trip request (size 0 or n too large)"));
    }
    let addr = resolve(&config.addr)?;
    let fd_limit = crate::sys::raise_fd_limit().context("raising the descriptor limit")?;
    let need = config.conns as u64 + SPARE_FDS;
    if need > fd_limit {
        return Err(bad_input(format!(
            "--conns {} needs about {need} file descriptors, but this process may open only {fd_limit} \
             (its hard limit); raise it with `ulimit -Hn` as root or LimitNOFILE, or ask for fewer",
            config.conns
        )));
    }
    if config.timeout.is_zero() {
        return Err(bad_input("--timeout must be more than 0"));
    }
    let before =
        match config.server_pid {
            Some(pid) => Some(server_sample(pid).ok_or_else(|| {
                bad_input(format!("--server-pid {pid}: no such process in /proc"))
            })?),
            None => None,
        };
    let mut h = Hold::new(config, addr)?;
    if let Some(at) = config.start_at {
        crate::load::wait_until(at);
    }
    let wall_start = unix_now();
    let open_start = Instant::now();
    h.open_all()?;
    let open_secs = open_start.elapsed().as_secs_f64();
    h.round_trip()?;
    let mut peak = before;
    let hold_start = Instant::now();
    h.hold(config.duration, |_| {
        if let (Some(pid), Some(p)) = (config.server_pid, &mut peak)
            && let Some(s) = server_sample(pid)
        {
            *p = (p.0.max(s.0), p.1.max(s.1), p.2.max(s.2));
        }
    })?;
    let held_secs = hold_start.elapsed().as_secs_f64();
    let server = match (config.server_pid, before, peak) {
        (Some(pid), Some(b), Some(p)) => Some(ServerStats {
            pid,
            rss_before_bytes: b.0,
            rss_holding_bytes: p.0,
            threads_before: b.1,
            threads_holding: p.1,
            children_before: b.2,
            children_holding: p.2,
        }),
        _ => None,
    };
    let us = |h: &Histogram<u64>, q: f64| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0;
    let rtt = if h.rtt.is_empty() {
        Rtt::default()
    } else {
        Rtt {
            p50: us(&h.rtt, 0.5),
            p99: us(&h.rtt, 0.99),
            max: us(&h.rtt, 1.0),
        }
    };
    let (size, n, prefix) =
        crate::load::report::spoken(config.service, config.size, config.n, &config.prefix);
    Ok(HoldReport {
        addr: config.addr.clone(),
        service: match config.service {
            Service::Echo => "echo".into(),
            Service::Fib => "fib".into(),
        },
        conns: config.conns,
        in_flight: config.in_flight,
        opened: h.opened,
        failed: h.failed.values().sum(),
        failed_by_errno: h.failed.clone(),
        answered_ok: h.answered_ok,
        rtt_errors: h.rtt_errors.clone(),
        closed_while_holding: h.closed_while_holding,
        open_secs,
        held_secs,
        source_addrs: h.sources_used,
        fd_limit,
        rtt_us: rtt,
        server,
        window_start_unix: wall_start,
        window_end_unix: wall_start + open_start.elapsed().as_secs_f64(),
        start_late_secs: config
            .start_at
            .map(|at| (wall_start - crate::load::unix_secs(at)).max(0.0)),
        size,
        n,
        prefix,
        duration_secs: config.duration.as_secs_f64(),
        histogram: crate::load::report::encode_histogram(&h.rtt),
        interrupted: crate::interrupt::requested(),
    })
}

/// Now, in Unix seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

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

struct Hold<'a> {
    config: &'a HoldConfig,
    addr: SocketAddr,
    poll: Poll,
    events: Events,
    slots: Vec<Slot>,
    pool: PayloadPool,
    fib_line: Vec<u8>,
    opened: u64,
    failed: BTreeMap<String, u64>,
    answered_ok: u64,
    rtt_errors: RttErrors,
    closed_while_holding: u64,
    sources_used: usize,
    rtt: Histogram<u64>,
    buf: Vec<u8>,
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None => format!("{:?}", e.kind()),
    }
}

impl<'a> Hold<'a> {
    fn new(config: &'a HoldConfig, addr: SocketAddr) -> Result<Self> {
        Ok(Hold {
            config,
            addr,
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
            sources_used: 0,
            rtt: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?,
            buf: vec![0; 64 * 1024],
        })
    }

    fn fail_connect(&mut self, e: &std::io::Error) {
        *self.failed.entry(errno_name(e)).or_default() += 1;
    }

    /// The source address for connection `i`: spread over 127.0.0.x on loopback.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let block = (i / self.config.per_source) as u32;
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
            self.sources_used = self.sources_used.max(i / self.config.per_source + 1);
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

    /// Phase 1: open every connection, at most `batch` connects in progress.
    fn open_all(&mut self) -> Result<()> {
        let mut next = 0;
        let mut pending: VecDeque<usize> = VecDeque::new();
        let mut in_progress = 0usize;
        while next < self.config.conns || in_progress > 0 {
            // Ctrl-C: connects still in progress are neither opened nor failed.
            if crate::interrupt::requested() {
                break;
            }
            while next < self.config.conns && in_progress < self.config.batch {
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
    /// outstanding at once (see the module doc).
    fn round_trip(&mut self) -> Result<()> {
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
                return Ok(());
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
        // Untried connections stay open and held; watch them for a close as well.
        for i in next..self.slots.len() {
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

    /// Phase 3: keep everything open for `duration`, or until the server has closed
    /// every connection; count what the server closes.
    /// `sample` runs about every 100 ms (to read the server's /proc entry).
    fn hold(&mut self, duration: Duration, mut sample: impl FnMut(&mut Self)) -> Result<()> {
        let end = Instant::now() + duration;
        // A close that arrived during the round trip phase already used its epoll
        // edge: look at every held connection once.
        for i in 0..self.slots.len() {
            self.check_closed(i);
        }
        sample(self);
        loop {
            let now = Instant::now();
            if now >= end
                || self.slots.iter().all(|s| s.stream.is_none())
                || crate::interrupt::requested()
            {
                break;
            }
            let wait = (end - now).min(Duration::from_millis(100));
            for i in self.ready(wait)? {
                self.check_closed(i);
            }
            sample(self);
        }
        Ok(())
    }
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

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The human report.
pub fn render(r: &HoldReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hold {} {} | {} conns over {} source address(es) | fd limit {}",
        r.service,
        r.addr,
        r.conns,
        r.source_addrs.max(1),
        r.fd_limit
    );
    if let Some(late) = r.start_late_secs {
        let _ = writeln!(out, "started {late:.6} s after --start-at");
    }
    if r.interrupted {
        let _ = writeln!(
            out,
            "interrupted: stopped by Ctrl-C; what was measured until then"
        );
    }
    let _ = writeln!(
        out,
        "opened {}/{} in {:.3} s   failed {}",
        r.opened, r.conns, r.open_secs, r.failed
    );
    for (errno, n) in &r.failed_by_errno {
        let _ = writeln!(out, "  failed {errno}: {n}");
    }
    let e = &r.rtt_errors;
    // Percentiles only of round trips that happened.
    let _ = write!(
        out,
        "round trip ({} in flight at most): answered ok {}/{}",
        r.in_flight, r.answered_ok, r.conns
    );
    if r.answered_ok > 0 {
        let _ = write!(
            out,
            "   p50 {:.1} us   p99 {:.1} us   max {:.1} us",
            r.rtt_us.p50, r.rtt_us.p99, r.rtt_us.max
        );
    }
    let _ = writeln!(out);
    if e.total() > 0 {
        let _ = writeln!(
            out,
            "  round-trip errors: timeout {}  mismatch {}  closed_early {}  io {}  not_tried {}",
            e.timeout, e.mismatch, e.closed_early, e.io, e.not_tried
        );
    }
    if e.not_tried > 0 {
        let _ = writeln!(
            out,
            "  not tried: a round trip timed out with no other answered meanwhile, so the server was taken to have stopped answering"
        );
    }
    let _ = writeln!(
        out,
        "held {:.2} s: closed by the server meanwhile {}",
        r.held_secs, r.closed_while_holding
    );
    if let Some(s) = &r.server {
        let grown = s.rss_holding_bytes.saturating_sub(s.rss_before_bytes);
        // No growth is not "0 B per connection": a server that held connections
        // before keeps (and reuses) that memory, so the cost is not visible here.
        let cost = match grown.checked_div(r.opened) {
            Some(per) if grown > 0 => format!("+{:.1} MB, {per} B per connection", mb(grown)),
            _ if r.opened == 0 => "nothing held".to_string(),
            _ => "did not grow: memory kept from earlier connections was reused, \
                  so this is not a per-connection cost"
                .to_string(),
        };
        let _ = writeln!(
            out,
            "server pid {}: rss {:.1} MB before, {:.1} MB holding ({cost}); \
             threads {} -> {}; children {} -> {}",
            s.pid,
            mb(s.rss_before_bytes),
            mb(s.rss_holding_bytes),
            s.threads_before,
            s.threads_holding,
            s.children_before,
            s.children_holding
        );
    }
    out
}
