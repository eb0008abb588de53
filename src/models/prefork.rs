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
//! killed server, and on SIGTERM/SIGINT they see the same pipe, finish their
//! client and exit; the parent waits out the grace period, kills stragglers and
//! reaps them.
//!
//! Cost: `--workers` processes (page tables, copy-on-write pages) whatever the load.
//! Ceiling: `--workers` clients at once; the rest wait in the listen backlog, and a
//! silent client holds its process until `--idle-timeout`.

use crate::serve::accept::{Acceptor, Gate, Next, shared_slots};
use crate::serve::supervise::{Exited, Supervisor};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the parent looks for dead children.
const TICK: Duration = Duration::from_millis(100);

/// A child that dies younger than this is replaced only after this long.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    // A worker's tag is its index: its --max-conns slot and its place in `due`.
    let mut workers = Supervisor::new("prefork")?;
    let slots = shared_slots(cfg.workers).context("mapping the --max-conns counters")?;
    // When each vacant worker is due to be (re)started; `None`: running.
    let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); cfg.workers];
    // The whole pool first: the server says it serves only once every worker runs.
    for (i, when) in due.iter_mut().enumerate() {
        if let Err(e) = workers.spawn(i, || work(i, &listener, cfg, &shutdown, slots)) {
            workers.finish(Duration::ZERO);
            return Err(e).with_context(|| format!("forking worker {i} of {}", cfg.workers));
        }
        *when = None;
    }
    ready.announce()?;
    loop {
        let now = Instant::now();
        for (i, when) in due.iter_mut().enumerate() {
            if when.is_some_and(|t| now >= t) {
                slots[i].store(0, Ordering::SeqCst);
                *when = match workers.spawn(i, || work(i, &listener, cfg, &shutdown, slots)) {
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
        if shutdown.wait(Some(TICK)) {
            break;
        }
        workers.reap(|Exited { pid, tag: i, lived }| {
            slots[i].store(0, Ordering::SeqCst);
            // A worker that died young waits a while, so a crash cannot become a fork loop.
            let delay = if lived < RESPAWN_DELAY {
                RESPAWN_DELAY
            } else {
                Duration::ZERO
            };
            tracing::info!("worker {i} (pid {pid}) exited: replacing it");
            due[i] = Some(Instant::now() + delay);
        });
    }
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
