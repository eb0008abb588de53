//! The fork supervisor behind `processes` (a child per client), `prefork` (a
//! fixed set of workers) and `reuseport --fork` (a fixed set of event loops):
//! forking, reaping, and stopping children, in one place.
//!
//! The models differ only in *when* they fork and what a child runs; the rest
//! is the same and easy to get subtly wrong, so it lives here:
//!
//! - **Forking safely.** fork() copies only the calling thread, so a lock another
//!   thread held (the allocator's, a logger's) stays held forever in the child.
//!   [`Supervisor::new`] therefore refuses to start unless the server is
//!   single-threaded.
//! - **Children die with their parent.** A child asks the kernel for SIGKILL when its
//!   parent dies (`PR_SET_PDEATHSIG`), so `kill -9` of the server leaves no worker
//!   holding the port or a client. The parent may die between fork() and that
//!   request, and then the child would never be told: it checks that its parent is
//!   still the process that forked it, and exits at once if not. (The signal follows
//!   the *thread* that forked; both models fork from the main thread, which lives as
//!   long as the server.)
//! - **Signals.** A child ignores SIGINT (Ctrl-C reaches the whole terminal group,
//!   and the parent passes it on) and has a shutdown pipe of its own, so SIGTERM
//!   stops it gracefully, like a server's shutdown, and a signal aimed at a child
//!   never shuts the parent down ([`shutdown::child_signals`]). Both signals are
//!   blocked across fork(), so none lands before the child has its own pipe.
//! - **A panic ends the child**, never unwinds into a copy of the parent's loop; the
//!   child leaves with `_exit`, so it runs none of the parent's destructors.
//! - **Reaping.** [`Supervisor::reap`] collects every child that has exited without
//!   blocking, so no zombies pile up, logs the ones that failed or were killed, and
//!   hands each back to the model (to free its `--max-conns` place, or replace it).
//! - **Stopping.** On SIGTERM/SIGINT [`Supervisor::finish`] sends each child
//!   SIGTERM; they finish what they owe and exit, and it waits for them up to the
//!   grace period, then SIGKILLs the rest and reaps them all. A SIGTERM to the whole
//!   process group (systemd stopping the service) reaches every child directly and
//!   ends the same way.
//!
//! fork() in a multi-threaded test harness is exactly what [`Supervisor::new`]
//! refuses, so this module is tested through the real server: `tests/fork.rs`
//! (children die with a SIGKILLed server) and `tests/serve.rs` (reaping, replacing
//! dead workers, the grace period).

use super::shutdown;
use anyhow::bail;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often [`Supervisor::finish`] looks for children that have exited.
const FINISH_TICK: Duration = Duration::from_millis(10);

/// How often a pool's parent ([`Supervisor::keep_running`]) looks for dead workers.
pub const POOL_TICK: Duration = Duration::from_millis(100);

/// A pool worker that dies younger than this is replaced only after this long.
pub const RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// Exit status of a child whose work panicked.
const PANICKED: i32 = 101;

/// Exit status of a child whose work returned an error (logged first).
const FAILED: i32 = 1;

/// Forked children, each with the model's tag (a `--max-conns` token, a worker
/// index) and the time it started.
#[derive(Debug)]
pub struct Supervisor<T> {
    children: HashMap<Pid, (T, Instant)>,
    me: Pid,
}

/// A child [`Supervisor::reap`] collected.
#[derive(Debug)]
pub struct Exited<T> {
    pub pid: Pid,
    pub tag: T,
    /// How long it ran.
    pub lived: Duration,
}

impl<T> Supervisor<T> {
    /// A supervisor for `model`; refuses unless this process is single-threaded.
    pub fn new(model: &str) -> anyhow::Result<Self> {
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
        if threads != 1 {
            bail!("the {model} model must fork from a single-threaded server ({threads} threads)");
        }
        Ok(Supervisor {
            children: HashMap::new(),
            me: getpid(),
        })
    }

    /// Fork a child that runs `work` and exits (status 0, or 101 if `work`
    /// panicked). In the parent, `work` is dropped unrun: whatever it owns (the
    /// parent's copy of a client socket) is closed.
    pub fn spawn(&mut self, tag: T, work: impl FnOnce()) -> nix::Result<Pid> {
        // Held back until the child has its own shutdown pipe: a SIGTERM meant for
        // the child must not land on the parent's.
        let mut stop_signals = SigSet::empty();
        stop_signals.add(Signal::SIGTERM);
        stop_signals.add(Signal::SIGINT);
        let mut before = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&stop_signals),
            Some(&mut before),
        )?;
        let restore = || pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
        // SAFETY: the process is single-threaded (checked in `new`), so the child
        // gets a consistent copy of every lock and allocator.
        let forked = unsafe { fork() };
        if !matches!(forked, Ok(ForkResult::Child)) {
            restore()?;
        }
        match forked? {
            ForkResult::Child => {
                die_with(self.me);
                shutdown::child_signals();
                let _ = restore();
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ran.is_ok() { 0 } else { PANICKED }) }
            }
            ForkResult::Parent { child } => {
                self.children.insert(child, (tag, Instant::now()));
                Ok(child)
            }
        }
    }

    /// [`Supervisor::spawn`] for work that can fail: an error is logged (one line,
    /// naming the child's `what`) and the child exits with status 1.
    pub fn spawn_fallible(
        &mut self,
        tag: T,
        what: &str,
        work: impl FnOnce() -> anyhow::Result<()>,
    ) -> nix::Result<Pid> {
        self.spawn(tag, || {
            if let Err(e) = work() {
                tracing::error!("{what}: {e:#}");
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(FAILED) }
            }
        })
    }

    /// How many children are running.
    pub fn running(&self) -> usize {
        self.children.len()
    }

    /// Collect every child that has exited, without blocking; `exited` gets each.
    /// A child that failed or was killed is logged.
    pub fn reap(&mut self, mut exited: impl FnMut(Exited<T>)) {
        while !self.children.is_empty() {
            let pid = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if code != 0 {
                        tracing::warn!("child {pid} exited with status {code}");
                    }
                    pid
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    tracing::warn!("child {pid} was killed by {sig}");
                    pid
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some((tag, started)) = self.children.remove(&pid) {
                exited(Exited {
                    pid,
                    tag,
                    lived: started.elapsed(),
                });
            }
        }
    }

    /// Shutdown: tell every child (SIGTERM: each has its own shutdown pipe), wait
    /// up to `grace` for them to finish, then SIGKILL the rest and reap every one.
    pub fn finish(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for pid in self.children.keys() {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        self.reap(drop);
        while !self.children.is_empty() && Instant::now() < deadline {
            std::thread::sleep(FINISH_TICK);
            self.reap(drop);
        }
        for pid in self.children.keys() {
            tracing::warn!("child {pid} still busy after the grace period: killing it");
            let _ = kill(*pid, Signal::SIGKILL);
        }
        for pid in std::mem::take(&mut self.children).into_keys() {
            let _ = waitpid(pid, None);
        }
    }
}

impl Supervisor<usize> {
    /// Keep a pool of workers tagged `0..count`, all started already, running until
    /// shutdown (prefork, `reuseport --fork`). Every [`POOL_TICK`] the pool is
    /// reaped: `exited(i)` is told of each worker that died (to free what it held)
    /// and it is replaced by `start(self, i)`, after [`RESPAWN_DELAY`] if it died
    /// younger than that, so a worker that crashes at once cannot become a fork
    /// loop; a fork that fails is retried after the same delay. `turn` runs once a
    /// tick.
    pub fn keep_running<E: std::fmt::Display>(
        &mut self,
        count: usize,
        shutdown: &super::Shutdown,
        mut start: impl FnMut(&mut Self, usize) -> Result<Pid, E>,
        mut exited: impl FnMut(usize),
        mut turn: impl FnMut(),
    ) {
        // When each vacant worker is due to be started again; `None`: running.
        let mut due: Vec<Option<Instant>> = vec![None; count];
        loop {
            let now = Instant::now();
            for (i, when) in due.iter_mut().enumerate() {
                if when.is_some_and(|t| now >= t) {
                    *when = match start(self, i) {
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(
                                "cannot fork worker {i}: {e}; retrying in {RESPAWN_DELAY:?}"
                            );
                            Some(now + RESPAWN_DELAY)
                        }
                    };
                }
            }
            if shutdown.wait(Some(POOL_TICK)) {
                return;
            }
            turn();
            self.reap(|Exited { pid, tag: i, lived }| {
                exited(i);
                let delay = if lived < RESPAWN_DELAY {
                    RESPAWN_DELAY
                } else {
                    Duration::ZERO
                };
                tracing::warn!("worker {i} (pid {pid}) exited: replacing it");
                due[i] = Some(Instant::now() + delay);
            });
        }
    }
}

/// In a fresh child of `parent`: have the kernel SIGKILL this process when the
/// parent dies; if the parent has already died (the child was re-parented before it
/// could ask), exit at once.
fn die_with(parent: Pid) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory;
    // it fails only for an invalid signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if getppid() != parent {
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(1) }
    }
}
