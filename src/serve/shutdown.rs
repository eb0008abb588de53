//! SIGINT and SIGTERM as a self-pipe.
//!
//! The signal handler writes one byte into a pipe and nothing ever reads it, so from
//! then on the pipe's read end is readable forever: every waiter sees it, whether it
//! blocks in poll(2) beside a socket (blocking, threads, processes), puts it in its
//! select(2) set (select), registers it with an event loop (epoll, async) or has
//! io_uring poll it (uring).
//!
//! A forked child (`processes`, `prefork`, `reuseport --fork`) gets a pipe of its
//! own ([`child_signals`]): the same descriptors, re-pointed at a new pipe, so every
//! waiter the child sets up watches the private one. A SIGTERM aimed at the child
//! (`kill` of one worker, or systemd's SIGTERM to the whole control group) then stops
//! that child the way a shutdown stops the server, finishing what it owes within the
//! grace period, and never reaches the parent; the parent passes its own shutdown on
//! by sending each child SIGTERM (`Supervisor::finish`).
//!
//! The handler is signal-hook's (`low_level::pipe`), the Rust ecosystem's standard
//! for this: it does only async-signal-safe things (one non-blocking `write(2)`),
//! keeps the interrupted code's errno, and chains with other handlers of the same
//! signal instead of replacing them. The pipe stays ours, so every kind of waiter
//! above can watch it. It is created once per process.

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The process's shutdown pipe, once SIGINT and SIGTERM are routed to it.
static INSTALLED: Mutex<Option<Shutdown>> = Mutex::new(None);

/// The descriptors signal-hook's handlers write to (copies of the installed pipe's
/// write end), so a forked child can re-point them at its own pipe.
static HOOKED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// A handle on "has shutdown been requested?"; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
}

impl Shutdown {
    /// Create the pipe (once) and route SIGINT and SIGTERM to it.
    pub fn install() -> Result<Shutdown> {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shutdown) = &*installed {
            return Ok(shutdown.clone());
        }
        let shutdown = Shutdown::unhooked()?;
        let mut hooked = HOOKED.lock().unwrap_or_else(PoisonError::into_inner);
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            let write = shutdown.write.try_clone().context("duplicating the pipe")?;
            hooked.push(write.as_raw_fd());
            signal_hook::low_level::pipe::register_raw(sig as libc::c_int, write)
                .with_context(|| format!("routing {sig} to the pipe"))?;
        }
        *installed = Some(shutdown.clone());
        Ok(shutdown)
    }

    /// A shutdown pipe no signal writes to, only [`Shutdown::trigger`].
    pub fn unhooked() -> Result<Shutdown> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("creating the shutdown pipe")?;
        Ok(Shutdown {
            read: Arc::new(read),
            write: Arc::new(write),
        })
    }

    /// Request shutdown as a signal would (for tests and internal use).
    pub fn trigger(&self) {
        // A full pipe is readable already: nothing to do if this write fails.
        let _ = nix::unistd::write(&*self.write, b"x");
    }

    /// Whether shutdown has been requested (never blocks).
    pub fn requested(&self) -> bool {
        self.wait(Some(Duration::ZERO))
    }

    /// Wait up to `timeout` (`None`: forever) for shutdown; true if requested.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        poll_readable(&[self.read.as_fd()], timeout)
            .first()
            .copied()
            .unwrap_or(false)
    }

    /// The pipe's read end, readable once shutdown is requested.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The raw descriptor, for select(2) sets.
    pub fn raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// In a freshly forked child, before it runs anything: SIGINT (sent to the whole
/// terminal group by Ctrl-C) is ignored, because the parent gets it too and passes
/// it on as SIGTERM; and the installed shutdown pipe is replaced by a private one,
/// the same descriptor numbers pointing at a new pipe, so SIGTERM (or a
/// [`Shutdown::trigger`]) in the child stops only the child. Either way, a signal
/// aimed at a child never makes the parent shut down.
///
/// The child must not have registered the old pipe anywhere yet (an epoll or
/// io_uring instance watches the pipe itself, not its number): every model sets up
/// its waiters after the fork. If re-pointing fails, SIGTERM falls back to killing
/// the child outright, as it would with no handler.
pub fn child_signals() {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_IGN has no handler-safety requirements.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &ignore);
    }
    let installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    let private = installed.as_ref().is_some_and(|s| s.make_private().is_ok());
    if !private {
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installing SIG_DFL has no handler-safety requirements.
        unsafe {
            let _ = sigaction(Signal::SIGTERM, &default);
        }
    }
}

impl Shutdown {
    /// Point this pipe's descriptors, and the signal handlers' copies, at a new pipe.
    fn make_private(&self) -> nix::Result<()> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let onto = |from: &OwnedFd, to: RawFd| {
            // SAFETY: dup3(2) on descriptors this process owns; `to` stays owned by
            // whoever owned it (the Shutdown, signal-hook), now naming the new pipe.
            Errno::result(unsafe { libc::dup3(from.as_raw_fd(), to, libc::O_CLOEXEC) })
        };
        onto(&read, self.read.as_raw_fd())?;
        onto(&write, self.write.as_raw_fd())?;
        for &fd in HOOKED.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            onto(&write, fd)?;
        }
        Ok(()) // `read` and `write` close here; the copies keep the pipe open
    }
}

/// poll(2) the descriptors for readability (or hang-up) for up to `timeout`;
/// returns which are ready. See [`poll`].
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<bool> {
    let with_events: Vec<_> = fds.iter().map(|fd| (*fd, libc::POLLIN)).collect();
    poll(&with_events, timeout)
}

/// poll(2) each descriptor for its events (POLLIN, POLLOUT) until one is ready or
/// `timeout` (`None`: forever) has passed; returns which are ready (errors and
/// hang-ups count as ready, so the next read or write reports them).
///
/// A signal handled meanwhile does not end the wait: poll(2) returns EINTR then,
/// whatever SA_RESTART says, and a caller that took "nothing ready" for "time is
/// up" would close a connection as idle because of an unrelated signal. The wait
/// goes on for the time left instead (a shutdown signal makes the pipe readable,
/// so the next round sees it at once).
pub fn poll(fds: &[(BorrowedFd<'_>, libc::c_short)], timeout: Option<Duration>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n > 0 {
            return pfds.iter().map(|p| p.revents != 0).collect();
        }
        if n == 0 || Errno::last() != Errno::EINTR {
            return vec![false; fds.len()];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trigger latches: every clone sees it, for good, and another pipe does not.
    /// (SIGINT and SIGTERM themselves are tested on the real server, tests/serve.rs.)
    #[test]
    fn trigger_latches_for_every_clone_only() {
        let a = Shutdown::unhooked().unwrap();
        let other = Shutdown::unhooked().unwrap();
        let seen_by = a.clone();
        assert!(!a.requested());
        a.trigger();
        assert!(seen_by.requested());
        assert!(
            seen_by.wait(None),
            "wait(None) returns at once once requested"
        );
        assert!(a.requested(), "nothing consumes the byte");
        assert!(!other.requested());
    }
}
