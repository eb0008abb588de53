//! Ctrl-C for the measuring clients (`concur load`, `concur hold`): a run of ten
//! seconds or more must not lose what it measured because the user got impatient.
//!
//! The first SIGINT only raises a flag; every loop of the run checks it at each
//! wake-up (they wake at least every 100 ms) and stops, and the command prints what
//! was measured so far, marked interrupted, and exits [`EXIT_CODE`] (128 + SIGINT, as
//! a shell reports a command Ctrl-C killed). Waits that could outlast that are made
//! in slices too: `load`'s connects are non-blocking and waited for 100 ms at a time
//! (a blocking connect to an address that drops SYNs would sit out `--timeout`, and
//! the standard library retries it on EINTR). A second SIGINT means "now", for
//! whatever the first cannot stop (a report stuck writing to a full pipe, say): the
//! handler exits at once with the same status, printing nothing.
//!
//! A `concur hold` spread over processes ([`catch_as_child`]) leaves the decision to
//! its parent: its children ignore SIGINT (a terminal's Ctrl-C reaches the whole
//! process group) and take SIGTERM, which the parent sends once on the first Ctrl-C,
//! as their first Ctrl-C; on the second the parent exits at once and the children die
//! with it (`PR_SET_PDEATHSIG`).
//!
//! `concur lab` catches its interrupts the same way (see `lab::runner`); its clients
//! run in their own process groups, so a terminal's Ctrl-C reaches only the lab.

use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of a run stopped by Ctrl-C.
pub const EXIT_CODE: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; nothing is flushed, by design.
        unsafe { libc::_exit(EXIT_CODE as libc::c_int) }
    }
}

/// Install the SIGINT handler described in the module doc.
pub fn catch() {
    // SAFETY: the handler only touches an atomic and calls _exit, both
    // async-signal-safe; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        // No SA_RESTART: a blocking wait returns EINTR, and every loop re-checks.
        action.sa_flags = 0;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// True once the first Ctrl-C arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

extern "C" fn on_sigterm(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// For a child of a spread `concur hold`: SIGINT ignored, SIGTERM raises the flag
/// (and never exits: the child still reports what it measured to its parent).
pub fn catch_as_child() {
    // SAFETY: as in `catch`: the handler only stores to an atomic; the sigaction
    // structs are fully initialised.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = 0;
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}
