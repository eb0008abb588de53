//! `prefork`: `--workers` processes forked in advance, each accepting on the shared
//! listener and serving one client at a time; Apache's prefork MPM.
//!
//! ```python
//! sock = socket(); sock.bind(addr); sock.listen()
//! for _ in range(N):
//!     if os.fork() == 0:
//!         while True:
//!             client, addr = sock.accept()
//!             echo_handler(client, addr)
//! ```
//!
//! It is `processes` with the forks moved out of the accept path: a fork per
//! worker at start instead of one per client, and a worker serves client after
//! client. Each child runs the `blocking` model's loop ([`blocking_conn`]) on the
//! listener it inherited; every idle child waits in poll(2) on it, so a new client
//! wakes them all and one wins the accept (the thundering herd Apache serialised
//! with an accept mutex; with a few dozen children it costs little).
//!
//! The parent only watches: it waits on the shutdown pipe, reaps children and
//! replaces any that die (at once, or after a second if the dead child had run
//! less than a second, so a crashing child cannot make it fork in a loop). On
//! SIGTERM/SIGINT the children see the same pipe, finish their client and exit; the
//! parent waits out the grace period, kills stragglers and reaps them all.
//! `--max-conns` is counted in shared memory, one slot per child, so a child
//! that is killed mid-client does not leak its place.
//!
//! fork() copies only the calling thread, so the server must be single-threaded
//! when it forks: checked at start.
//!
//! Cost: `--workers` processes (page tables, copy-on-write pages) whatever the load.
//! Ceiling: `--workers` clients at once; the rest wait in the listen backlog, and a
//! silent client holds its process until `--idle-timeout`.

use crate::serve::accept::{Acceptor, Gate, Next, shared_slots};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn, shutdown};
use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the parent looks for dead children.
const TICK: Duration = Duration::from_millis(100);

/// A child that dies younger than this is replaced only after this long.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

struct Worker {
    pid: Option<Pid>,
    started: Instant,
    respawn_at: Instant,
}

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads != 1 {
        bail!("the prefork model must fork from a single-threaded server ({threads} threads)");
    }
    let slots = shared_slots(cfg.workers).context("mapping the --max-conns counters")?;
    let now = Instant::now();
    let mut workers: Vec<Worker> = (0..cfg.workers)
        .map(|_| Worker {
            pid: None,
            started: now,
            respawn_at: now,
        })
        .collect();
    let mut announced = false;
    loop {
        let now = Instant::now();
        for (i, w) in workers.iter_mut().enumerate() {
            if w.pid.is_none() && now >= w.respawn_at {
                w.pid = spawn(i, &listener, cfg, &shutdown, slots);
                w.started = now;
                w.respawn_at = now + RESPAWN_DELAY; // if fork failed: try again later
            }
        }
        // The pool is complete once: only then does the server say it serves.
        if !announced {
            if let Some(missing) = workers.iter().position(|w| w.pid.is_none()) {
                for pid in workers.iter_mut().filter_map(|w| w.pid.take()) {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                }
                bail!("cannot fork worker {missing}: {}", std::io::Error::last_os_error());
            }
            ready.announce()?;
            announced = true;
        }
        if shutdown.wait(Some(TICK)) {
            break;
        }
        reap(&mut workers, slots, true);
    }
    // The children saw the shutdown pipe too: they finish their client and exit.
    let deadline = Instant::now() + cfg.grace;
    while workers.iter().any(|w| w.pid.is_some()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        reap(&mut workers, slots, false);
    }
    for pid in workers.iter().filter_map(|w| w.pid) {
        tracing::warn!("child {pid} still busy after the grace period: killing it");
        let _ = kill(pid, Signal::SIGKILL);
    }
    for pid in workers.iter_mut().filter_map(|w| w.pid.take()) {
        let _ = waitpid(pid, None);
    }
    Ok(())
}

/// Fork worker `i`; in the child, serve until shutdown and exit.
fn spawn(
    i: usize,
    listener: &TcpListener,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    slots: &'static [AtomicUsize],
) -> Option<Pid> {
    slots[i].store(0, Ordering::SeqCst);
    // SAFETY: the process is single-threaded (checked in `run`), so the child gets a
    // consistent copy of every lock and allocator.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            shutdown::child_signals();
            // A panic must end this child, never unwind into the parent's loop.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let gate = Gate::shared(cfg.max_conns, slots, i);
                let mut acceptor = Acceptor::with_gate(listener, shutdown, gate, None);
                loop {
                    match acceptor.wait() {
                        Next::Client(client) => blocking_conn::serve_client(client, cfg, shutdown),
                        Next::Tick => {}
                        Next::Shutdown => return,
                    }
                }
            }));
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if served.is_ok() { 0 } else { 101 }) }
        }
        Ok(ForkResult::Parent { child }) => Some(child),
        Err(e) => {
            tracing::warn!("cannot fork worker {i}: {e}; retrying in {RESPAWN_DELAY:?}");
            None
        }
    }
}

/// Collect every child that has exited, without blocking; free its `--max-conns`
/// slot and, if `replace`, schedule its replacement.
fn reap(workers: &mut [Worker], slots: &[AtomicUsize], replace: bool) {
    loop {
        let pid = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if replace || code != 0 {
                    tracing::warn!("worker {pid} exited with status {code}");
                }
                pid
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                tracing::warn!("worker {pid} was killed by {sig}");
                pid
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let Some(i) = workers.iter().position(|w| w.pid == Some(pid)) else {
            continue;
        };
        slots[i].store(0, Ordering::SeqCst);
        let w = &mut workers[i];
        w.pid = None;
        let now = Instant::now();
        w.respawn_at = if now.duration_since(w.started) < RESPAWN_DELAY {
            now + RESPAWN_DELAY
        } else {
            now
        };
        if replace {
            tracing::info!("replacing worker {i}");
        }
    }
}
