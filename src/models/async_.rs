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
//! `--offload` sends fib to tokio's blocking pool (`spawn_blocking`, at most
//! `--workers` threads): the task awaits the result, its worker thread serves other
//! tasks meanwhile, and the replies to one read are written in request order.
//!
//! Cost: epoll underneath, one registration per client; memory per idle client is
//! its task, its session and tokio's registration: no read buffer (the task's read
//! borrows its worker thread's buffer only while it is polled), no reply buffer
//! unless small: about 1.8 KB resident per idle connection (measured with 10,000
//! held), most of it the task's future. Ceiling:
//! tens of thousands of clients, bounded by the descriptor limit and `--max-conns`
//! (10,000 by default, reached on the 2-core development machine).

use crate::protocol::{Flow, Job, Session, Sink};
use crate::serve::accept::{ConnToken, Gate, after_accept_error};
use crate::serve::offload::INLINE_MAX_N;
use crate::serve::{LINGER, READ_SIZE, ServeConfig, Shutdown, log_closed, log_io_error, log_open};
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
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers)
        // --offload: fib goes to spawn_blocking, at most --workers threads of it.
        .max_blocking_threads(cfg.workers)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(serve(listener, Arc::new(cfg.clone()), shutdown));
    // Tasks still busy after the grace period (a fib, a stuck write) are dropped.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(
    listener: std::net::TcpListener,
    cfg: Arc<ServeConfig>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listener")?;
    let stop = watch_shutdown(&shutdown)?;
    let gate = Gate::new(cfg.max_conns);
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
                tokio::spawn(echo_handler(stream, addr, token, cfg.clone(), stop.clone()));
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
    mut stop: watch::Receiver<bool>,
) {
    log_open(&addr);
    let _ = stream.set_nodelay(true);
    if let Err(e) = serve_conn(&mut stream, &cfg, &mut stop).await {
        log_io_error(&addr, &e);
    }
    log_closed(&addr);
}

async fn serve_conn(
    stream: &mut TcpStream,
    cfg: &ServeConfig,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let mut session = cfg.service.session();
    let mut out = Vec::new();
    // Made once: waiting on it again does not re-register with the channel.
    let stopped = requested(stop);
    tokio::pin!(stopped);
    loop {
        out.clear();
        let mut replies = Offloaded::default();
        let (n, flow) = tokio::select! {
            r = within(cfg.idle_timeout, read_and_feed(stream, &mut session, &mut out, cfg.offload.then_some(&mut replies))) => r?,
            _ = &mut stopped => return linger_close(stream).await,
        };
        if n == 0 {
            return within(cfg.idle_timeout, stream.write_all(&out)).await;
        }
        within(cfg.idle_timeout, stream.write_all(&out)).await?;
        for reply in replies.0 {
            let bytes = match reply {
                Reply::Bytes(b) => b,
                Reply::Job(handle) => handle.await.map_err(io::Error::other)?,
            };
            within(cfg.idle_timeout, stream.write_all(&bytes)).await?;
        }
        if out.capacity() > KEEP_CAPACITY {
            out = Vec::new();
        }
        if flow == Flow::Close {
            return linger_close(stream).await;
        }
    }
}

/// Wait for input, read it into this worker thread's buffer and feed it to the
/// session in the same poll, with no await in between: an idle task holds no read
/// buffer. Requests go to `offloaded` if given (`--offload`), else to `out`; the end
/// of stream is told to the session with `out`. Returns the bytes read (0: end of
/// stream) and the session's flow.
///
/// This is tokio's documented `AsyncRead::poll_read`, which also treats a read
/// shorter than the buffer as having drained the socket (TCP: nothing more was
/// queued) and clears the readiness, so the next wait goes straight to epoll instead
/// of spending a read on EAGAIN, as the epoll model does (tokio-rs/tokio#5866).
fn read_and_feed<'a>(
    stream: &'a mut TcpStream,
    session: &'a mut Session,
    out: &'a mut Vec<u8>,
    mut offloaded: Option<&'a mut Offloaded>,
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
            Poll::Ready(Ok(match (data.len(), offloaded.as_deref_mut()) {
                (0, _) => {
                    session.eof(out);
                    (0, Flow::Close)
                }
                (n, Some(replies)) => (n, session.feed(data, replies)),
                (n, None) => (n, session.feed(data, out)),
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

/// One read's replies with `--offload`: bytes, and fib jobs already running on
/// tokio's blocking pool, written in this order.
#[derive(Default)]
struct Offloaded(Vec<Reply>);

enum Reply {
    Bytes(Vec<u8>),
    Job(tokio::task::JoinHandle<Vec<u8>>),
}

impl Sink for Offloaded {
    fn bytes(&mut self, data: &[u8]) {
        match self.0.last_mut() {
            Some(Reply::Bytes(b)) => b.extend_from_slice(data),
            _ => self.0.push(Reply::Bytes(data.to_vec())),
        }
    }
    fn job(&mut self, job: Job) {
        let compute = move || {
            let mut reply = Vec::new();
            job.run(&mut reply);
            reply
        };
        if job.n <= INLINE_MAX_N {
            self.bytes(&compute()); // cheaper than the hand-off
        } else {
            self.0
                .push(Reply::Job(tokio::task::spawn_blocking(compute)));
        }
    }
}

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
