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
//! The first listener is bound without SO_REUSEPORT and opened to it only after
//! the bind ([`listener`]): a port another server already listens on is refused
//! (exit 2), though SO_REUSEPORT would have let this one join it.
//!
//! **`--fork`: loops as processes** (nginx's `worker_processes`). With threads, every
//! connection is a descriptor of one process, so one process's descriptor limit
//! bounds the whole server (20,000 on this machine). With `--fork` each loop runs in
//! a process of its own, with its own descriptor table:
//!
//! ```python
//! socks = [reuseport_socket(addr) for _ in range(N)]   # bound up front, in the parent
//! for i in range(N):
//!     if os.fork() == 0:
//!         close(every sock but socks[i]); serve_forever(socks[i]); os._exit(0)
//! supervise()                                          # replace the dead, pass on SIGTERM
//! ```
//!
//! The parent binds every listener before forking (a bind that fails is an exit 2
//! before any worker runs) and keeps them all, serving nothing: worker `i` inherits
//! listener `i` and closes the others. A killed worker's listener therefore stays
//! open in the parent, and the connections the kernel queued on it wait in its
//! backlog for the replacement, which inherits the same socket; only the killed
//! worker's accepted connections are lost. Forking, reaping, replacing and stopping
//! are [`crate::serve::supervise`]'s (as for `prefork`): the parent must be
//! single-threaded, so it starts no thread, and an `--offload` pool is created in
//! each worker after the fork (threads do not survive fork). `--max-conns` counts
//! the whole server in shared memory, one slot per worker, zeroed when the worker
//! dies. Each worker says on a pipe when its loop is set up, and the server
//! announces itself only once every worker has.
//!
//! Cost per connection: the same as `epoll` (a few hundred bytes, no buffer while
//! idle); `--fork` adds a process per worker (its page tables, copy-on-write pages).
//! Ceiling: `--workers` cores of throughput; for connections, `--max-conns` and the
//! descriptor limit, of the one process or, with `--fork`, of each worker.

use super::epoll;
use crate::serve::accept::{Gate, shared_slots};
use crate::serve::shutdown::poll_readable;
use crate::serve::supervise::{Exited, POOL_TICK, Supervisor};
use crate::serve::{Ready, ServeConfig, Shutdown, listener, offload_pool};
use anyhow::{Context, bail};
use nix::fcntl::OFlag;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How much longer than the grace period the `--fork` parent waits for its workers
/// (each starts its own grace period when the SIGTERM it is sent arrives) before
/// SIGKILLing them.
const FINISH_SLACK: Duration = Duration::from_secs(1);

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
    if cfg.fork {
        forked(&listeners, cfg, &shutdown, ready)
    } else {
        threaded(listeners, cfg, &shutdown, ready)
    }
}

/// The loops as threads of this process, sharing one `--max-conns` counter and one
/// `--offload` pool.
fn threaded(
    listeners: Vec<TcpListener>,
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let pool = offload_pool(cfg)?;
    let gate = Gate::new(cfg.max_conns);
    std::thread::scope(|scope| {
        // Each loop says `true` once set up and `false` when it ends: the server is
        // announced only when every loop has said `true`.
        let (started_tx, started) = mpsc::channel::<bool>();
        let mut loops = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let (gate, pool) = (&gate, pool.as_ref());
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

/// `--fork`: worker `i` is a process serving `listeners[i]`; this process only
/// supervises.
fn forked(
    listeners: &[TcpListener],
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let mut workers = Supervisor::new("reuseport --fork")?;
    let slots = shared_slots(cfg.workers).context("mapping the --max-conns counters")?;
    let started = Started::new()?;
    let spawn = |workers: &mut Supervisor<usize>, i: usize| {
        slots[i].store(0, Ordering::SeqCst);
        let what = format!("worker {i}");
        workers.spawn_fallible(i, &what, || {
            work(i, listeners, cfg, shutdown, slots, &started)
        })
    };
    for i in 0..listeners.len() {
        if let Err(e) = spawn(&mut workers, i) {
            workers.finish(Duration::ZERO);
            return Err(e).with_context(|| format!("forking worker {i} of {}", cfg.workers));
        }
    }
    // Every worker says when its loop is set up; one that exits first failed to start.
    let mut up = 0;
    while up < listeners.len() {
        let mut died = None;
        workers.reap(|e| died = died.take().or(Some(e)));
        if let Some(Exited { pid, tag: i, .. }) = died {
            workers.finish(Duration::ZERO);
            bail!("worker {i} (pid {pid}) exited before it could serve");
        }
        let seen = poll_readable(&[shutdown.fd(), started.read.as_fd()], Some(POOL_TICK));
        if seen[0] {
            workers.finish(cfg.grace + FINISH_SLACK);
            return Ok(());
        }
        up += started.drain();
    }
    if let Err(e) = ready.announce() {
        shutdown.trigger();
        workers.finish(cfg.grace + FINISH_SLACK);
        return Err(e);
    }
    workers.keep_running(
        listeners.len(),
        shutdown,
        spawn,
        // Its connections died with it: free their places under --max-conns.
        |i| slots[i].store(0, Ordering::SeqCst),
        || {
            started.drain(); // replacements say they are up too
        },
    );
    workers.finish(cfg.grace + FINISH_SLACK);
    Ok(())
}

/// Worker `i`, in its own process: keep listener `i`, close the others, and run the
/// epoll loop on it until shutdown.
fn work(
    i: usize,
    listeners: &[TcpListener],
    cfg: &ServeConfig,
    shutdown: &Shutdown,
    slots: &'static [AtomicUsize],
    started: &Started,
) -> anyhow::Result<()> {
    let mine = listeners[i]
        .try_clone()
        .context("duplicating the worker's listener")?;
    for l in listeners {
        // SAFETY: the parent's listeners, inherited: this child never uses them again
        // nor drops them (it leaves with _exit), so closing the descriptors here
        // cannot close anything twice. `mine` is a duplicate of its own.
        unsafe { libc::close(l.as_raw_fd()) };
    }
    let gate = Gate::shared(cfg.max_conns, slots, i);
    let pool = offload_pool(cfg)?;
    epoll::serve_loop(mine, cfg, shutdown, &gate, pool.as_ref(), || started.say())
}

/// The pipe on which each worker says its loop is set up: one byte each.
struct Started {
    read: OwnedFd,
    write: OwnedFd,
}

impl Started {
    fn new() -> anyhow::Result<Started> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("creating the workers' start pipe")?;
        Ok(Started { read, write })
    }

    /// In a worker: "my loop is set up".
    fn say(&self) -> anyhow::Result<()> {
        nix::unistd::write(&self.write, b"u").context("telling the server this worker is up")?;
        Ok(())
    }

    /// In the parent: how many workers have said so since the last call.
    fn drain(&self) -> usize {
        let mut buf = [0u8; 256];
        let mut n = 0;
        while let Ok(got @ 1..) = nix::unistd::read(&self.read, &mut buf) {
            n += got;
        }
        n
    }
}
