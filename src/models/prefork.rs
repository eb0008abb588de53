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
//! less than a second, so a crashing child cannot make it fork in a loop).
//! `--max-conns` is counted in shared memory, one slot per child, so a child that
//! is killed mid-client does not leak its place.
//!
//! Forking, reaping and stopping are [`crate::serve::supervise`]'s, shared with
//! `processes`: the server must be single-threaded to fork, workers die with a
//! killed server, and on SIGTERM/SIGINT the parent passes the stop on (SIGTERM to
//! each child, which has a shutdown pipe of its own), they finish their client and
//! exit; the parent waits out the grace period, kills stragglers and reaps them.
//! SIGTERM to one worker stops only that worker, gracefully, and it is replaced.
//!
//! Cost: `--workers` processes (page tables, copy-on-write pages) whatever the load.
//! Ceiling: `--workers` clients at once; the rest wait in the listen backlog, and a
//! silent client holds its process until `--idle-timeout`.

use crate::serve::accept::{Acceptor, Gate, Next, shared_slots};
use crate::serve::supervise::Supervisor;
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    // A worker's tag is its index: its --max-conns slot.
    let mut workers = Supervisor::new("prefork")?;
    let slots = shared_slots(cfg.workers).context("mapping the --max-conns counters")?;
    let start = |workers: &mut Supervisor<usize>, i: usize| {
        slots[i].store(0, Ordering::SeqCst);
        workers.spawn(i, || work(i, &listener, cfg, &shutdown, slots))
    };
    // The whole pool first: the server says it serves only once every worker runs.
    for i in 0..cfg.workers {
        if let Err(e) = start(&mut workers, i) {
            workers.finish(Duration::ZERO);
            return Err(e).with_context(|| format!("forking worker {i} of {}", cfg.workers));
        }
    }
    ready.announce()?;
    // A worker that dies is replaced; its connections died with it, so its place
    // under --max-conns is freed.
    workers.keep_running(
        cfg.workers,
        &shutdown,
        start,
        |i| slots[i].store(0, Ordering::SeqCst),
        || {},
    );
    workers.finish(cfg.grace);
    Ok(())
}

/// Worker `i`, in its own process: accept and serve clients one at a time until
/// shutdown.
fn work(
    i: usize,
    listener: &TcpListener,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    slots: &'static [AtomicUsize],
) {
    let gate = Gate::shared(cfg.max_conns, slots, i);
    let mut acceptor = Acceptor::with_gate(listener, shutdown, gate, None);
    loop {
        match acceptor.wait() {
            Next::Client(client) => blocking_conn::serve_client(client, cfg, shutdown),
            Next::Tick => {}
            Next::Shutdown => return,
        }
    }
}
