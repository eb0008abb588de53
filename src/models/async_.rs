//! `async`: tokio, the asyncio of Rust. One task per client on a multi-threaded
//! runtime of `--workers` threads (default: one per core).
//!
//! ```python
//! while True:
//!     client, addr = await loop.sock_accept(sock)
//!     loop.create_task(echo_handler(client, addr))
//!
//! async def echo_handler(client, addr):
//!     while True:
//!         data = await loop.sock_recv(client, 10000)
//!         if not data: break
//!         await loop.sock_sendall(client, b'Received: ' + data)
//! ```
//!
//! The handler is the blocking loop of `threads` with `.await` at each wait: a task
//! costs a few hundred bytes and a buffer instead of a thread's stack, and waiting
//! clients cost no thread at all. Memory stays bounded the same way: a task writes
//! the replies to one read in full before reading again.
//!
//! fib is computed inline, inside the task, as the talk's asyncio fib server does:
//! a long fib holds one worker thread, and every client whose task sits on that
//! worker's queue waits (with `--workers 1`, every client waits). The talk's lesson.
//!
//! `--offload` sends fib to the same bounded, fair pool the other event loops use
//! ([`crate::serve::offload`], `--workers` threads), not to tokio's `spawn_blocking`,
//! whose queue has no limit and no notion of connections. Each task has its own
//! lane in the pool and awaits each job's reply on a oneshot channel, its worker
//! thread serving other tasks meanwhile; replies are written in request order. A
//! task has at most [`MAX_JOBS_PER_CONN`](crate::serve::offload::MAX_JOBS_PER_CONN) jobs queued or running: then its session
//! pauses, the task stops reading, and each reply it writes makes room to parse the
//! next held request. When the task ends (the client went), its queued jobs go.
//!
//! Cost: epoll underneath, one registration per client; memory per idle client is
//! its task, its session and tokio's registration: no read buffer (the task's read
//! borrows its worker thread's buffer only while it is polled), no reply buffer
//! unless small: about 1.8 KB resident per idle connection (measured with 10,000
//! held), most of it the task's future. Ceiling:
//! tens of thousands of clients, bounded by the descriptor limit and `--max-conns`
//! (10,000 by default, reached on the 2-core development machine).

use crate::protocol::{Flow, Session};
use crate::serve::accept::{ConnToken, Gate, after_accept_error};
use crate::serve::offload::{Lane, Ordered, Pending, Pool};
use crate::serve::{
    LINGER, READ_SIZE, Ready, ServeConfig, Shutdown, log_closed, log_io_error, log_open,
};
use anyhow::Context;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn run(
    listener: std::net::TcpListener,
    cfg: &ServeConfig,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let pool = crate::serve::offload_pool(cfg)?.map(Arc::new);
    let runtime = runtime(cfg.workers).context("starting the tokio runtime")?;
    let result = runtime.block_on(serve(
        listener,
        Arc::new(cfg.clone()),
        pool,
        shutdown,
        ready,
    ));
    // Tasks still busy after the grace period (a fib, a stuck write) are dropped.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// tokio's multi-threaded runtime with `workers` threads. tokio panics, rather than
/// returning an error, when the OS refuses it a worker thread (a process limit,
/// say); that panic is caught here, quietly, and becomes the error it should be.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // still single-threaded: nobody else panics
    let built = std::panic::catch_unwind(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    });
    std::panic::set_hook(hook);
    match built {
        Ok(runtime) => Ok(runtime?),
        Err(panic) => {
            let why = (panic.downcast_ref::<String>().map(String::as_str))
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("it panicked");
            Err(anyhow::anyhow!("{why}"))
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    cfg: Arc<ServeConfig>,
    pool: Option<Arc<Pool>>,
    shutdown: Shutdown,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listener")?;
    let stop = watch_shutdown(&shutdown)?;
    let gate = Gate::new(cfg.max_conns);
    ready.announce()?;
    let mut stopped = stop.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = requested(&mut stopped) => break,
        };
        match accepted {
            Ok((stream, addr)) => {
                let Some(token) = gate.admit(&addr) else {
                    continue;
                };
                let lane = pool.as_deref().map(Pool::lane);
                tokio::spawn(echo_handler(
                    stream,
                    addr,
                    token,
                    cfg.clone(),
                    lane,
                    stop.clone(),
                ));
            }
            Err(e) => {
                if let Some(pause) = after_accept_error(&e) {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = requested(&mut stopped) => break,
                    }
                }
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + cfg.grace;
    while gate.live() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One client, one task.
async fn echo_handler(
    mut stream: TcpStream,
    addr: SocketAddr,
    _token: ConnToken,
    cfg: Arc<ServeConfig>,
    lane: Option<Lane>,
    mut stop: watch::Receiver<bool>,
) {
    log_open(&addr);
    let _ = stream.set_nodelay(true);
    if let Err(e) = serve_conn(&mut stream, &cfg, lane, &mut stop).await {
        log_io_error(&addr, &e);
    }
    log_closed(&addr);
}

async fn serve_conn(
    stream: &mut TcpStream,
    cfg: &ServeConfig,
    lane: Option<Lane>,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let mut session = cfg.service.session();
    let mut out = Replies::new(lane);
    // Made once: waiting on it again does not re-register with the channel.
    let stopped = requested(stop);
    tokio::pin!(stopped);
    loop {
        let (n, mut flow) = tokio::select! {
            r = within(cfg.idle_timeout, read_and_feed(stream, &mut session, &mut out)) => r?,
            _ = &mut stopped => return linger_close(stream).await,
        };
        // Write what is owed, in request order. Each reply awaited makes room for
        // another job, so a paused session resumes here; this ends with nothing
        // owed and the session no longer paused.
        loop {
            if !out.ready.is_empty() {
                within(cfg.idle_timeout, stream.write_all(&out.ready)).await?;
                out.ready.clear();
            }
            let Some(pending) = out.take_next() else {
                break;
            };
            let bytes = match pending {
                Pending::Bytes(b) => b,
                Pending::Job(reply) => {
                    let reply = reply
                        .await
                        .map_err(|_| io::Error::other("the offload pool dropped a job"))?;
                    if session.resume(&mut out) == Flow::Close {
                        flow = Flow::Close;
                    }
                    reply
                }
            };
            within(cfg.idle_timeout, stream.write_all(&bytes)).await?;
        }
        debug_assert!(!session.is_paused());
        if out.ready.capacity() > KEEP_CAPACITY {
            out.ready = Vec::new();
        }
        if n == 0 {
            return Ok(()); // the client closed its side and has every reply
        }
        if flow == Flow::Close {
            return linger_close(stream).await;
        }
    }
}

/// Wait for input, read it into this worker thread's buffer and feed it to the
/// session in the same poll, with no await in between: an idle task holds no read
/// buffer. Returns the bytes read (0: end of stream, already told to the session)
/// and the session's flow.
///
/// This is tokio's documented `AsyncRead::poll_read`, which also treats a read
/// shorter than the buffer as having drained the socket (TCP: nothing more was
/// queued) and clears the readiness, so the next wait goes straight to epoll instead
/// of spending a read on EAGAIN, as the epoll model does (tokio-rs/tokio#5866).
fn read_and_feed<'a>(
    stream: &'a mut TcpStream,
    session: &'a mut Session,
    out: &'a mut Replies,
) -> impl Future<Output = io::Result<(usize, Flow)>> + 'a {
    std::future::poll_fn(move |cx| {
        READ_BUF.with_borrow_mut(|buf| {
            let mut read = ReadBuf::new(buf);
            loop {
                match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => break,
                }
            }
            let data = read.filled();
            Poll::Ready(Ok(if data.is_empty() {
                session.eof(out);
                (0, Flow::Close)
            } else {
                (data.len(), session.feed(data, out))
            }))
        })
    })
}

thread_local! {
    /// Each runtime thread's read buffer, shared by the tasks it runs.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_SIZE]);
}

/// A reply buffer up to this capacity is kept for the next read's replies.
const KEEP_CAPACITY: usize = 1024;

/// A task's replies not yet written, in request order: the one ordered sink of
/// every offloading model, with the pool's replies coming through channels.
type Replies = Ordered<Lane>;

/// Run an I/O future with the idle timeout, if any (`TimedOut` when it expires).
async fn within<T>(
    limit: Option<Duration>,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        None => io.await,
        Some(limit) => tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
            tracing::info!("closing an idle connection (--idle-timeout)");
            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
        }),
    }
}

/// Send FIN, then discard input until the client closes or [`LINGER`] passes, so the
/// last replies are not destroyed by a reset.
async fn linger_close(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown().await?;
    let mut sink = vec![0u8; 4096]; // on the heap: an array would sit in every task
    let _ = tokio::time::timeout(LINGER, async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
    Ok(())
}

/// Resolves once shutdown is requested.
async fn requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The shutdown pipe as a watch channel every task can wait on.
fn watch_shutdown(shutdown: &Shutdown) -> anyhow::Result<watch::Receiver<bool>> {
    let fd = shutdown
        .fd()
        .try_clone_to_owned()
        .context("duplicating the shutdown pipe")?;
    // SAFETY: `fd` is our own duplicate, owned by the AsyncFd until it is dropped.
    let pipe = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
    .context("registering the shutdown pipe")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let _ = pipe.readable().await;
        let _ = tx.send(true);
    });
    Ok(rx)
}
