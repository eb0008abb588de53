//! `threads`: a new OS thread per client, the talk's option 1.
//!
//! ```python
//! while True:
//!     client, addr = sock.accept()
//!     Thread(target=echo_handler, args=(client, addr)).start()
//! ```
//!
//! Each client gets the same blocking loop the `blocking` model runs, on its own
//! thread, so a slow or silent client holds only its thread. Rust threads run fib
//! in parallel on every core; Python's would not (the GIL).
//!
//! Cost: a thread per client: a kernel task, a stack (256 KiB reserved here, touched
//! pages only), a context switch per wake-up. Ceiling: measured on the 2-core,
//! 24 GB development machine, 9000 idle clients held 9000 threads and about 23 KiB
//! resident each, still answering; the hard limits are `ulimit -u`,
//! `/proc/sys/kernel/threads-max`, the descriptor limit and memory. When the kernel
//! refuses a new thread, that client is closed and logged, and the others carry on.
//! One limit cannot be met that way: each thread takes about four memory mappings
//! and past `vm.max_map_count` (65530) a starting thread cannot set up its signal
//! stack and the whole process aborts (seen at about 16,900 threads). So the model
//! serves at most [`crate::sys::thread_ceiling`] clients at once (13,106 with the
//! default settings) and closes any more at once, like `--max-conns`.

use crate::serve::accept::{Acceptor, Next};
use crate::serve::{Ready, ServeConfig, Shutdown, blocking_conn};
use std::net::TcpListener;
use std::time::Instant;

/// Stack reserved per client thread (fib's recursion is at most 50 frames deep).
const STACK: usize = 256 * 1024;

pub fn run(
    listener: TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let ceiling = crate::sys::thread_ceiling();
    if cfg.max_conns > ceiling {
        tracing::info!("threads: serving at most {ceiling} clients at once (one thread each)");
    }
    let mut acceptor = Acceptor::new(&listener, &shutdown, cfg.max_conns.min(ceiling), None);
    ready.announce()?;
    loop {
        match acceptor.wait() {
            Next::Client(client) => {
                let (cfg, shutdown) = (cfg.clone(), shutdown.clone());
                let addr = client.addr;
                let spawned = std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || blocking_conn::serve_client(client, &cfg, &shutdown));
                if let Err(e) = spawned {
                    tracing::warn!("refused {addr}: cannot start a thread: {e}");
                }
            }
            Next::Tick => {}
            Next::Shutdown => break,
        }
    }
    // Each thread sees the shutdown pipe, sends what it owes and exits.
    acceptor.gate.wait_all_closed(Instant::now() + cfg.grace);
    Ok(())
}
