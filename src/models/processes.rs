//! `processes`: fork a child process per client, the talk's option 2.
//!
//! ```python
//! while True:
//!     client, addr = sock.accept()
//!     Process(target=echo_handler, args=(client, addr)).start()
//! ```
//!
//! The child serves its client with the same blocking loop as `threads` and exits;
//! the parent only accepts. Two things the slide leaves out are done here:
//! - the parent closes its copy of the client socket at once (otherwise the client
//!   would never see the connection close, and the parent would run out of
//!   descriptors);
//! - the parent reaps its children with waitpid(WNOHANG) on every turn of its accept
//!   loop (every 100 ms at least), so no zombies pile up; a child that crashes or
//!   is killed is just reaped and logged.
//!
//! fork() copies only the calling thread, so forking a multi-threaded process can
//! leave a lock held forever in the child. This model therefore refuses to start
//! unless the server is single-threaded (no runtime, no helper threads).
//!
//! Cost: a process per client: fork, page tables, copy-on-write faults, and an
//! exit and reap per connection. Ceiling: measured on the 2-core development
//! machine, 8000 idle clients in 8000 children still answered, though accepting
//! them took seconds (a fork each); the limits are `ulimit -u`,
//! `/proc/sys/kernel/pid_max` and memory. When fork fails, that client is closed
//! and logged. On shutdown, children get the grace period to
//! finish, then SIGKILL.

use crate::serve::accept::{Acceptor, ConnToken, Next};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn, shutdown};
use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How often the accept loop wakes to reap children when no client arrives.
const TICK: Duration = Duration::from_millis(100);

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads != 1 {
        bail!("the processes model must fork from a single-threaded server ({threads} threads)");
    }
    let mut children: HashMap<Pid, ConnToken> = HashMap::new();
    let mut acceptor = Acceptor::new(&listener, &shutdown, cfg.max_conns, Some(TICK));
    ready.announce()?;
    loop {
        match acceptor.wait() {
            // SAFETY: the process is single-threaded (checked above), so the child
            // gets a consistent copy of every lock and allocator.
            Next::Client(client) => match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    shutdown::child_signals();
                    let _ = nix::unistd::close(listener.as_raw_fd());
                    // A panic must end this child, never unwind into the parent's loop.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        blocking_conn::serve_client(client, cfg, &shutdown)
                    }));
                    // SAFETY: _exit ends the child without running the parent's destructors.
                    unsafe { libc::_exit(if served.is_ok() { 0 } else { 101 }) }
                }
                Ok(ForkResult::Parent { child }) => {
                    children.insert(child, client.token);
                    drop(client.stream); // the parent's copy: close it
                }
                Err(e) => tracing::warn!("refused {}: cannot fork: {e}", client.addr),
            },
            Next::Tick => {}
            Next::Shutdown => break,
        }
        reap(&mut children);
    }
    // The children saw the shutdown pipe too: they send what they owe and exit.
    let deadline = Instant::now() + cfg.grace;
    while !children.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        reap(&mut children);
    }
    for pid in children.keys() {
        tracing::warn!("child {pid} still busy after the grace period: killing it");
        let _ = kill(*pid, Signal::SIGKILL);
    }
    for pid in std::mem::take(&mut children).into_keys() {
        let _ = waitpid(pid, None);
    }
    Ok(())
}

/// Collect every child that has exited, without blocking.
fn reap(children: &mut HashMap<Pid, ConnToken>) {
    while !children.is_empty() {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if code != 0 {
                    tracing::warn!("child {pid} exited with status {code}");
                }
                children.remove(&pid);
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                tracing::warn!("child {pid} was killed by {sig}");
                children.remove(&pid);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
