//! A hold too large for one process, spread over several: nginx's answer to the
//! per-process descriptor limit, applied to the client.
//!
//! One process may open only `RLIMIT_NOFILE` descriptors (20,000 here, a hard limit
//! root cannot raise), so a million connections need about fifty processes. The
//! parent re-runs this same binary as children (`concur hold --spread-child OFFSET`,
//! a hidden flag), each with a share of the connections below its own limit, and
//! numbers the connections across all of them so the source addresses (127.0.0.x,
//! `--per-source` each) continue from one child to the next.
//!
//! The parent does not simply start N independent holds: their phases would overlap
//! (one child's connects against another's round trips, all children's connects at
//! once against the server's accept queues), and the report would no longer say what
//! one hold says. It drives the children one command at a time over their standard
//! input, and they answer one line each on their standard output:
//!
//! ```text
//! parent -> child    child -> parent
//!                    ready                      (set up: limits raised, epoll made)
//! open               opened OPENED FAILED       (one child after the other)
//! rtt | skip         answered STALLED           (one child after the other)
//! hold               [empty]                    (all at once, until stdin closes)
//! <stdin closed>     {the child's JSON report}
//! ```
//!
//! So connections open in the same bounded batches as in one process, one child at a
//! time; round trips keep the same `--in-flight` bound across all children (one
//! child makes its round trips while every other holds); once one child's round trips
//! show that the server stopped answering, the rest are told to `skip` (counted as
//! `not_tried`); and every connection is held at once for `--duration` while the
//! parent reads the server's and the kernel's memory. The children's reports are then
//! merged exactly by [`super::merge_hold`], the function `concur merge` uses: counts
//! summed, round-trip histograms added and percentiles read from the sum.
//!
//! Children die with the parent (`PR_SET_PDEATHSIG`, then a check that the parent
//! did not die first) and ignore SIGINT: a terminal's Ctrl-C reaches the whole process
//! group, and only the parent decides. On its first Ctrl-C the parent sends each
//! child SIGTERM, which the child takes as its own first Ctrl-C (it stops its phase
//! and reports what it measured), merges what comes back and prints it marked
//! interrupted; on the second it exits at once and its children die with it.

use super::engine::{Ended, Hold, per_sec};
use super::{HoldConfig, HoldReport, SPARE_FDS, cost};
use crate::error::bad_input;
use crate::load::Service;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the parent wakes while it waits (to see Ctrl-C, to sample /proc).
const TICK: Duration = Duration::from_millis(100);

/// `conns` split over `processes` as evenly as possible.
pub fn shares(conns: usize, processes: usize) -> Vec<usize> {
    (0..processes)
        .map(|k| conns / processes + usize::from(k < conns % processes))
        .collect()
}

/// One child, as the parent sees it.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// Bytes read and not yet a whole line.
    partial: Vec<u8>,
    lines: VecDeque<String>,
    eof: bool,
    /// It said `ready`: its SIGTERM handler is installed.
    ready: bool,
}

impl Kid {
    /// Send one command; a child that died is found by its missing answer.
    fn say(&mut self, command: &str) {
        if let Some(stdin) = &mut self.stdin
            && stdin.write_all(format!("{command}\n").as_bytes()).is_err()
        {
            self.stdin = None;
        }
    }

    /// Read what the child has written (its stdout is non-blocking).
    fn read_some(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stdout.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.lines
                .push_back(String::from_utf8_lossy(&line[..end]).into_owned());
        }
    }
}

/// The children, killed and reaped if the parent leaves early (an error).
struct Kids {
    kids: Vec<Kid>,
}

impl Drop for Kids {
    fn drop(&mut self) {
        for kid in &mut self.kids {
            if matches!(kid.child.try_wait(), Ok(None)) {
                let _ = kid.child.kill();
                let _ = kid.child.wait();
            }
        }
    }
}

impl Kids {
    /// Start one child per share, each with its global offset.
    fn spawn(config: &HoldConfig, shares: &[usize], exe: &Path) -> Result<Kids> {
        let parent = std::process::id();
        let mut kids = Vec::with_capacity(shares.len());
        let mut offset = 0;
        for &share in shares {
            let mut cmd = Command::new(exe);
            cmd.args(child_args(config, share, offset))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: between fork and exec only async-signal-safe calls (prctl,
            // getppid, signal, _exit).
            unsafe {
                cmd.pre_exec(move || {
                    // Die with the parent; if it died before this line, leave now.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                    // Ctrl-C is the parent's to handle (ignored across exec, so there
                    // is no moment when it would kill the child).
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting a hold process ({})", exe.display()))?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().expect("piped stdout");
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let fd = stdout.as_raw_fd();
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            kids.push(Kid {
                child,
                stdin,
                stdout,
                partial: Vec::new(),
                lines: VecDeque::new(),
                eof: false,
                ready: false,
            });
            offset += share;
        }
        Ok(Kids { kids })
    }

    /// Wait up to `wait` for any child to write, and read it.
    fn pump(&mut self, wait: Duration) {
        let mut fds: Vec<libc::pollfd> = self
            .kids
            .iter()
            .filter(|k| !k.eof)
            .map(|k| libc::pollfd {
                fd: k.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(wait);
            return;
        }
        // SAFETY: poll gets a valid array of fds.len() pollfds. EINTR (Ctrl-C) just
        // returns early: every caller re-checks.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as libc::c_int,
            )
        };
        for kid in self.kids.iter_mut().filter(|k| !k.eof) {
            kid.read_some();
        }
    }

    /// The next line of child `k`; `None` if Ctrl-C came first (unless `to_the_end`).
    fn line(&mut self, k: usize, to_the_end: bool) -> Result<Option<String>> {
        loop {
            if let Some(line) = self.kids[k].lines.pop_front() {
                return Ok(Some(line));
            }
            if self.kids[k].eof {
                return Err(self.died(k));
            }
            if !to_the_end && crate::interrupt::requested() {
                return Ok(None);
            }
            self.pump(TICK);
        }
    }

    /// The error for child `k`, which ended without saying what it should have.
    fn died(&mut self, k: usize) -> anyhow::Error {
        let n = self.kids.len();
        let kid = &mut self.kids[k];
        let pid = kid.child.id();
        let status = kid
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        anyhow!(
            "hold process {} of {n} (pid {pid}) ended before reporting ({status})",
            k + 1
        )
    }

    /// Ask child `k` to do `command`; its answer, which must start with `expect`.
    fn ask(&mut self, k: usize, command: &str, expect: &str) -> Result<Option<String>> {
        self.kids[k].say(command);
        match self.line(k, false)? {
            Some(line) if line.starts_with(expect) => Ok(Some(line)),
            Some(line) => bail!("hold process {}: expected '{expect}', got '{line}'", k + 1),
            None => Ok(None),
        }
    }
}

/// The command line of the child holding `share` connections from global index
/// `offset` on.
fn child_args(config: &HoldConfig, share: usize, offset: usize) -> Vec<String> {
    let service = match config.service {
        Service::Echo => "echo",
        Service::Fib => "fib",
    };
    [
        "hold",
        "--addr",
        &config.addr,
        "--conns",
        &share.to_string(),
        "--service",
        service,
        "--timeout",
        &format!("{}us", config.timeout.as_micros().max(1)),
        "--per-source",
        &config.per_source.to_string(),
        "--batch",
        &config.batch.to_string(),
        "--in-flight",
        &config.in_flight.to_string(),
        "--prefix",
        &String::from_utf8_lossy(&config.prefix),
        "--spread-child",
        &offset.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The parent: spread `config.conns` over `processes` children of `exe` and merge
/// their reports (see the module doc).
pub(super) fn run(
    config: &HoldConfig,
    addr: SocketAddr,
    processes: usize,
    exe: &Path,
) -> Result<HoldReport> {
    let shares = shares(config.conns, processes);
    let mut server = cost::ServerWatch::start(config.server_pid)?;
    let mut kernel = cost::KernelWatch::start(super::local(addr));
    let mut kids = Kids::spawn(config, &shares, exe)?;
    // Every child set up before the clock starts.
    for k in 0..processes {
        match kids.line(k, false)? {
            Some(line) if line == "ready" => kids.kids[k].ready = true,
            Some(line) => bail!("hold process {}: expected 'ready', got '{line}'", k + 1),
            None => break,
        }
    }
    if let Some(at) = config.start_at {
        crate::load::wait_until(at);
    }
    let wall_start = super::unix_now();
    let open_start = Instant::now();
    // Phase 1, one child after the other.
    for k in 0..processes {
        if crate::interrupt::requested() || kids.ask(k, "open", "opened")?.is_none() {
            break;
        }
    }
    let open_secs = open_start.elapsed().as_secs_f64();
    if let Some(w) = &mut kernel {
        w.opened();
    }
    // Phase 2, one child after the other; a stall ends it for the rest.
    let mut stalled = false;
    for k in 0..processes {
        if crate::interrupt::requested() {
            break;
        }
        let command = if stalled { "skip" } else { "rtt" };
        match kids.ask(k, command, "answered")? {
            Some(line) => stalled |= line == "answered 1",
            None => break,
        }
    }
    // Phase 3, all at once; the parent keeps the time and reads /proc.
    for kid in &mut kids.kids {
        kid.say("hold");
    }
    let end = Instant::now() + config.duration;
    let mut empty = 0;
    loop {
        if let Some(s) = &mut server {
            s.sample();
        }
        if let Some(w) = &mut kernel {
            w.sample();
        }
        let now = Instant::now();
        if crate::interrupt::requested() || empty == processes || now >= end {
            break;
        }
        kids.pump(TICK.min(end - now));
        for k in 0..processes {
            while let Some(line) = kids.kids[k].lines.pop_front() {
                if line != "empty" {
                    bail!("hold process {}: expected 'empty', got '{line}'", k + 1);
                }
                empty += 1;
            }
            if kids.kids[k].eof {
                return Err(kids.died(k));
            }
        }
    }
    // The window ends here: what follows is the children's reports and their exit
    // (closing a million sockets takes the kernel most of a minute).
    let window_end = super::unix_now();
    // The server's last reading, its connections still held.
    let server = server.map(|s| s.finish());
    // Stop. After Ctrl-C a child may be in the middle of a phase: SIGTERM is its
    // Ctrl-C. Then a closed stdin tells every child to report.
    if crate::interrupt::requested() {
        for kid in kids.kids.iter().filter(|k| k.ready) {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(kid.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    for kid in &mut kids.kids {
        kid.stdin = None;
    }
    let mut reports = Vec::with_capacity(processes);
    for k in 0..processes {
        let report = loop {
            let line = kids.line(k, true)?.expect("read to the end");
            if line.starts_with('{') {
                break serde_json::from_str::<HoldReport>(&line)
                    .with_context(|| format!("hold process {}: its report", k + 1))?;
            }
        };
        reports.push((format!("hold process {}", k + 1), report.into()));
    }
    for kid in &mut kids.kids {
        let _ = kid.child.wait();
    }
    let mut r = super::merge_hold(&reports)?.report;
    r.processes = processes;
    r.in_flight = config.in_flight;
    r.open_secs = open_secs;
    r.open_per_sec = per_sec(r.opened, open_secs);
    r.source_addrs = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => config.conns.div_ceil(config.per_source),
        _ => 0,
    };
    r.server = server;
    r.kernel = kernel.map(|k| k.stats());
    r.window_start_unix = wall_start;
    r.window_end_unix = window_end;
    r.start_late_secs = config
        .start_at
        .map(|at| (wall_start - crate::load::unix_secs(at)).max(0.0));
    r.duration_secs = config.duration.as_secs_f64();
    r.interrupted |= crate::interrupt::requested();
    Ok(r)
}

/// The next command from the parent (one line on stdin, read unbuffered so that
/// nothing the parent sends later is swallowed); `None` when stdin is closed.
fn read_command() -> Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let mut byte = 0u8;
        // SAFETY: read(2) of one byte into a valid one-byte buffer.
        let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
        match n {
            0 => return Ok(None),
            1 if byte == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            1 => line.push(byte),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e).context("reading the parent hold's command");
                }
            }
        }
    }
}

/// One line to the parent.
fn tell(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to the parent hold")
}

/// A child: hold `config.conns` connections numbered from `offset`, one phase per
/// command of the parent (see the module doc).
pub(super) fn child(config: &HoldConfig, offset: usize) -> Result<u8> {
    let addr = super::validate(config)?;
    let fd_limit = crate::sys::raise_fd_limit().context("raising the descriptor limit")?;
    if config.conns as u64 + SPARE_FDS > fd_limit {
        return Err(bad_input(format!(
            "a hold process cannot open {} connections under its descriptor limit {fd_limit}",
            config.conns
        )));
    }
    let mut h = Hold::new(config, addr, offset)?;
    tell("ready")?;
    let mut wall_start = None;
    let mut open_secs = 0.0;
    let mut hold_start = None;
    while let Some(command) = read_command()? {
        match command.as_str() {
            "open" => {
                wall_start = Some(super::unix_now());
                let start = Instant::now();
                h.open_all()?;
                open_secs = start.elapsed().as_secs_f64();
                tell(&format!(
                    "opened {} {}",
                    h.opened,
                    h.failed.values().sum::<u64>()
                ))?;
            }
            "rtt" => {
                let stalled = h.round_trip()?;
                tell(&format!("answered {}", u8::from(stalled)))?;
            }
            "skip" => {
                h.skip_round_trips()?;
                tell("answered 0")?;
            }
            "hold" => {
                hold_start = Some(Instant::now());
                match h.hold(None, Some(0), || {})? {
                    // Nothing left to hold: say so, then wait for the parent's end.
                    Ended::Empty => tell("empty")?,
                    Ended::Stopped | Ended::Interrupted | Ended::Time => break,
                }
            }
            other => bail!("unknown command '{other}' from the parent hold"),
        }
    }
    let held_secs = hold_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let wall_start = wall_start.unwrap_or_else(super::unix_now);
    let report = h.report(fd_limit, wall_start, open_secs, held_secs);
    tell(&serde_json::to_string(&report)?)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_add_up() {
        assert_eq!(shares(40_000, 3), vec![13_334, 13_333, 13_333]);
        assert_eq!(shares(7, 7), vec![1; 7]);
        for (conns, p) in [(1_000_000, 51), (5, 2), (19_936, 1)] {
            let s = shares(conns, p);
            assert_eq!(s.iter().sum::<usize>(), conns);
            assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_child_is_told_its_share_and_offset() {
        let mut c = HoldConfig::new("127.0.0.1:25000", 100);
        c.prefix = Vec::new();
        let args = child_args(&c, 40, 60);
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("--conns"), "40");
        assert_eq!(after("--spread-child"), "60");
        assert_eq!(after("--prefix"), "");
        assert_eq!(after("--timeout"), "5000000us");
    }
}
