//! SIGINT and SIGTERM as a self-pipe.
//!
//! The signal handler writes one byte into a pipe and nothing ever reads it, so from
//! then on the pipe's read end is readable forever: every waiter sees it, whether it
//! blocks in poll(2) beside a socket (blocking, threads, processes), puts it in its
//! select(2) set (select) or registers it with an event loop (async). A forked child
//! shares the pipe, so one signal to the parent reaches every child too.
//!
//! A handler may only do async-signal-safe things; `write(2)` to a non-blocking pipe
//! is one. The pipe is created once per process.

use anyhow::{Context, Result};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
static READ_END: OnceLock<Arc<OwnedFd>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid static byte.
        // errno is saved and restored so the interrupted code never sees ours.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, b"x".as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// A handle on "has shutdown been requested?"; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    read: Arc<OwnedFd>,
}

impl Shutdown {
    /// Create the pipe (once) and route SIGINT and SIGTERM to it.
    pub fn install() -> Result<Shutdown> {
        let read = match READ_END.get() {
            Some(r) => r.clone(),
            None => {
                let (r, w) = nix::unistd::pipe2(
                    nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
                )
                .context("creating the shutdown pipe")?;
                WRITE_FD.store(std::os::fd::IntoRawFd::into_raw_fd(w), Ordering::Relaxed);
                READ_END.get_or_init(|| Arc::new(r)).clone()
            }
        };
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only calls write(2), which is async-signal-safe.
            unsafe { sigaction(sig, &action) }
                .with_context(|| format!("installing {sig} handler"))?;
        }
        Ok(Shutdown { read })
    }

    /// Request shutdown as a signal would (for tests and internal use).
    pub fn trigger(&self) {
        on_signal(0);
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

/// In a forked child serving one client: SIGINT (sent to the whole terminal group
/// by Ctrl-C) is ignored, because the parent gets it too and tells the child through
/// the shared pipe; SIGTERM kills the child outright. Either way, a signal aimed at
/// a child never makes the parent shut down.
pub fn child_signals() {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_IGN/SIG_DFL has no handler-safety requirements.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &ignore);
        let _ = sigaction(Signal::SIGTERM, &default);
    }
}

/// poll(2) the descriptors for readability (or hang-up) for up to `timeout`;
/// returns which are ready. EINTR counts as "nothing ready yet".
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<bool> {
    let with_events: Vec<_> = fds.iter().map(|fd| (*fd, libc::POLLIN)).collect();
    poll(&with_events, timeout)
}

/// poll(2) each descriptor for its events (POLLIN, POLLOUT) for up to `timeout`
/// (`None`: forever); returns which are ready (errors and hang-ups count as ready,
/// so the next read or write reports them). EINTR counts as "nothing ready yet".
pub fn poll(fds: &[(BorrowedFd<'_>, libc::c_short)], timeout: Option<Duration>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as i32,
    };
    // SAFETY: pfds is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents != 0).collect()
}
