//! `threadpool`: a fixed pool of `--workers` threads serving accepted clients from
//! a bounded queue. The talk's "threads are good into the thousands", with the
//! thousands made a fixed number.
//!
//! ```python
//! pool = ThreadPoolExecutor(max_workers=N)
//! while True:
//!     client, addr = sock.accept()
//!     pool.submit(echo_handler, client, addr)     # here: the queue is bounded
//! ```
//!
//! Each worker runs the same blocking loop as `threads` ([`blocking_conn`]), one
//! client at a time. The accept loop puts clients on a queue of `workers * 64`
//! places; when it is full, the new client is closed at once and counted in the
//! log, like `--max-conns`. Nothing grows with load: the threads are started
//! before the first client.
//!
//! Cost: `--workers` threads (a stack each) whatever the load; a queued client costs
//! its socket and a queue slot. Ceiling: `--workers` clients are served at once; a
//! silent client holds a worker until `--idle-timeout` (which is why the default is
//! 8 workers per core rather than one), the next ones wait in the queue.

use crate::serve::accept::{Acceptor, Client, Next};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

/// Queue places per worker.
pub const QUEUE_PER_WORKER: usize = 64;

/// Stack reserved per worker thread (fib's recursion is at most 50 frames deep).
const STACK: usize = 256 * 1024;

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<Client>(cfg.workers * QUEUE_PER_WORKER);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(cfg.workers);
    for i in 0..cfg.workers {
        let (rx, cfg, shutdown) = (rx.clone(), cfg.clone(), shutdown.clone());
        let worker = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .stack_size(STACK)
            .spawn(move || {
                loop {
                    let client = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(client) = client else { return };
                    if shutdown.requested() {
                        continue; // never served: just close it
                    }
                    blocking_conn::serve_client(client, &cfg, &shutdown);
                }
            })
            .context("starting the worker threads")?;
        workers.push(worker);
    }
    let full = AtomicU64::new(0);
    let mut acceptor = Acceptor::new(&listener, &shutdown, cfg.max_conns, None);
    ready.announce()?;
    loop {
        match acceptor.wait() {
            Next::Client(client) => {
                if let Err(mpsc::TrySendError::Full(c)) = tx.try_send(client) {
                    let refused = full.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        "refused {}: the queue of {} waiting clients is full ({refused} refused so far)",
                        c.addr,
                        cfg.workers * QUEUE_PER_WORKER
                    );
                }
            }
            Next::Tick => {}
            Next::Shutdown => break,
        }
    }
    // Queued clients are closed unserved; each worker sees the shutdown pipe, sends
    // what it owes and exits.
    drop(tx);
    acceptor.gate.wait_all_closed(Instant::now() + cfg.grace);
    Ok(())
}
