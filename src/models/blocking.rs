//! `blocking`: the talk's first server. One thread accepts a client and serves it
//! to the end before accepting the next.
//!
//! ```python
//! while True:
//!     client, addr = sock.accept()
//!     echo_handler(client, addr)
//! ```
//!
//! Cost: nothing beyond one thread and one buffer. Ceiling: one client at a time;
//! everyone else waits in the listen backlog (1024 here, 5 in the talk) until the
//! current client leaves. A client that connects and sends nothing holds the whole
//! server, which is why `--idle-timeout` exists. This is the slide's "What's wrong
//! with this example server?"

use crate::serve::accept::{Acceptor, Next};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use std::net::TcpListener;

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let mut acceptor = Acceptor::new(&listener, &shutdown, cfg.max_conns, None);
    ready.announce()?;
    loop {
        match acceptor.wait() {
            Next::Client(client) => blocking_conn::serve_client(client, cfg, &shutdown),
            Next::Tick => {}
            Next::Shutdown => return Ok(()),
        }
    }
}
