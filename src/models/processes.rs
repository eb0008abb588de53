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
//! - the parent reaps its children on every turn of its accept loop (every 100 ms
//!   at least), so no zombies pile up; a child that crashes or is killed is just
//!   reaped and logged, and its place under `--max-conns` freed.
//!
//! Forking, reaping and stopping are [`crate::serve::supervise`]'s, shared with
//! `prefork`: the server must be single-threaded to fork, children die with a
//! killed server, and on shutdown they get the grace period to finish, then
//! SIGKILL.
//!
//! Cost: a process per client: fork, page tables, copy-on-write faults, and an
//! exit and reap per connection. Ceiling: measured on the 2-core development
//! machine, 8000 idle clients in 8000 children still answered, though accepting
//! them took seconds (a fork each); the limits are `ulimit -u`,
//! `/proc/sys/kernel/pid_max` and memory. When fork fails, that client is closed
//! and logged.

use crate::serve::accept::{Acceptor, Client, Next};
use crate::serve::supervise::Supervisor;
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How often the accept loop wakes to reap children when no client arrives.
const TICK: Duration = Duration::from_millis(100);

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    // Each child holds its client's place under --max-conns (the token) until reaped.
    let mut children = Supervisor::new("processes")?;
    let mut acceptor = Acceptor::new(&listener, &shutdown, cfg.max_conns, Some(TICK));
    let shared = &shutdown;
    let listening = listener.as_raw_fd();
    ready.announce()?;
    loop {
        match acceptor.wait() {
            Next::Client(Client {
                stream,
                addr,
                token,
            }) => {
                // In the parent the closure is dropped unrun: that closes the
                // parent's copy of the socket; the token stays until the reap.
                let child = children.spawn(token, move || {
                    let _ = nix::unistd::close(listening); // the child only serves
                    blocking_conn::serve_connection(&stream, &addr, cfg, shared);
                });
                if let Err(e) = child {
                    tracing::warn!("refused {addr}: cannot fork: {e}");
                }
            }
            Next::Tick => {}
            Next::Shutdown => break,
        }
        children.reap(drop);
    }
    children.finish(cfg.grace);
    Ok(())
}
