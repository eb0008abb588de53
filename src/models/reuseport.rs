//! `reuseport`: thread per core, nginx style. `--workers` single-threaded event
//! loops (the `epoll` loop, unchanged), each with its own listening socket bound to
//! the same address with SO_REUSEPORT.
//!
//! ```python
//! def worker():
//!     sock = socket(); sock.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1); sock.bind(addr)
//!     serve_forever(sock)                 # the epoll loop
//! for _ in range(os.cpu_count()):
//!     Thread(target=worker).start()
//! ```
//!
//! The kernel spreads new connections over the listeners by a hash of the
//! connection's addresses, so the workers share nothing on the hot path: no lock,
//! no shared queue, no thundering herd. Each connection lives on one loop for its
//! whole life. The first listener is the one `concur serve` bound (and announced);
//! the others are bound to its port, so port 0 works too. Only `--max-conns` (one
//! counter) and the `--offload` pool are shared.
//!
//! The cost of not sharing: the hash does not look at load, so a worker whose
//! clients keep it busy (an inline fib) stalls only its own clients, while the other
//! workers may be idle.
//!
//! Cost per connection: the same as `epoll` (a few hundred bytes, no buffer while
//! idle). Ceiling: `--workers` cores of throughput; the descriptor limit and
//! `--max-conns` for connections.

use super::epoll;
use crate::serve::accept::Gate;
use crate::serve::{Ready, ServeConfig, Shutdown, listener, offload_pool};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::mpsc;

pub fn run(
    first: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let addr = first.local_addr().context("reading the bound address")?;
    let mut listeners = vec![first];
    for _ in 1..cfg.workers {
        let more = listener::bind_reuseport(addr)
            .with_context(|| format!("binding another SO_REUSEPORT listener on {addr}"))?;
        listeners.push(more);
    }
    let pool = offload_pool(cfg)?;
    let gate = Gate::new(cfg.max_conns);
    std::thread::scope(|scope| {
        // Each loop says `true` once set up and `false` when it ends: the server is
        // announced only when every loop has said `true`.
        let (started_tx, started) = mpsc::channel::<bool>();
        let mut loops = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let (gate, pool, shutdown) = (&gate, pool.as_ref(), &shutdown);
            let started_tx = started_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("loop-{i}"))
                .spawn_scoped(scope, move || {
                    let result = epoll::serve_loop(l, cfg, shutdown, gate, pool, || {
                        let _ = started_tx.send(true);
                        Ok(())
                    });
                    let _ = started_tx.send(false);
                    if result.is_err() {
                        shutdown.trigger(); // one loop failed: stop the others too
                    }
                    result
                });
            match spawned {
                Ok(h) => loops.push(h),
                Err(e) => {
                    shutdown.trigger();
                    loops.into_iter().for_each(|h| drop(h.join()));
                    return Err(e).context("starting the event-loop threads");
                }
            }
        }
        drop(started_tx);
        let all_started = (0..loops.len()).all(|_| started.recv() == Ok(true));
        let mut first_err = match all_started {
            true => ready.announce().err(),
            false => None,
        };
        if !all_started || first_err.is_some() {
            shutdown.trigger();
        }
        for h in loops {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}
