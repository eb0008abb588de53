//! `--offload`: an event loop hands fib to a worker pool and goes on serving.
//!
//! The talk's event loops compute fib inline, so one client's fib(40) stalls every
//! other client. With `--offload` the pieces are:
//!
//! - [`Pool`]: `--workers` threads taking [`Job`]s from one queue;
//! - [`Mailbox`]: one per event loop: finished jobs land here and an eventfd
//!   becomes readable, which wakes the loop (mio registers it, select(2) and
//!   io_uring poll it);
//! - [`Handle`]: what a connection's sink ([`super::conn::Outbox`]) holds to submit
//!   a job tagged with its loop key. The sink keeps the job's place in the reply
//!   order; [`super::conn::Conn::completed`] fills it in, so replies on one
//!   connection still come back in request order.
//!
//! Jobs up to fib([`INLINE_MAX_N`]) stay inline: cheaper than the hand-off.
//!
//! Job ids are unique for the life of the process, so a reply for a connection that
//! has gone (and whose key may have been reused) is recognised and dropped.

use crate::protocol::Job;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// fib(n) up to this n is computed inline even with `--offload`: it takes a few
/// microseconds, less than handing it to another thread and back.
pub const INLINE_MAX_N: u32 = 16;

/// A finished job: the connection's loop key, the job id, the reply bytes.
#[derive(Debug)]
pub struct Done {
    pub key: usize,
    pub id: u64,
    pub reply: Vec<u8>,
}

/// Where one event loop's finished jobs wait; its eventfd is readable while any do.
#[derive(Debug)]
pub struct Mailbox {
    done: Mutex<Vec<Done>>,
    efd: OwnedFd,
}

impl Mailbox {
    pub fn new() -> io::Result<Arc<Mailbox>> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Mailbox {
            done: Mutex::new(Vec::new()),
            // SAFETY: `fd` is a fresh descriptor we own.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// The eventfd the loop waits on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Reset the eventfd, then take every finished job. (In this order: a job that
    /// finishes after the take writes the eventfd again, so none is missed.)
    pub fn take(&self) -> Vec<Done> {
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a u64 from our own eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&raw mut counter).cast(), 8) };
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn post(&self, done: Done) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(done);
        let one = 1u64;
        // SAFETY: writing 8 bytes from a u64 to our own eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

struct Task {
    job: Job,
    key: usize,
    id: u64,
    mailbox: Arc<Mailbox>,
}

/// A fixed pool of threads computing jobs. Threads live as long as the process.
#[derive(Debug, Clone)]
pub struct Pool {
    tx: mpsc::Sender<Task>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Task({}, {:?})", self.id, self.job)
    }
}

impl Pool {
    /// Start `threads` workers.
    pub fn new(threads: usize) -> io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("offload-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    loop {
                        let task = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(task) = task else { return };
                        let mut reply = Vec::new();
                        task.job.run(&mut reply);
                        task.mailbox.post(Done {
                            key: task.key,
                            id: task.id,
                            reply,
                        });
                    }
                })?;
        }
        Ok(Pool { tx })
    }

    /// A connection's way to submit jobs whose replies go to `mailbox`, tagged `key`.
    pub fn handle(&self, mailbox: &Arc<Mailbox>, key: usize) -> Handle {
        Handle {
            tx: self.tx.clone(),
            mailbox: mailbox.clone(),
            key,
        }
    }
}

/// One connection's submitter.
#[derive(Debug)]
pub struct Handle {
    tx: mpsc::Sender<Task>,
    mailbox: Arc<Mailbox>,
    key: usize,
}

impl Handle {
    /// Queue `job`; returns its id. If the pool is gone the job runs here instead,
    /// its reply posted the same way.
    pub fn submit(&self, job: Job) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let task = Task {
            job,
            key: self.key,
            id,
            mailbox: self.mailbox.clone(),
        };
        if let Err(mpsc::SendError(task)) = self.tx.send(task) {
            let mut reply = Vec::new();
            task.job.run(&mut reply);
            task.mailbox.post(Done {
                key: task.key,
                id,
                reply,
            });
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_arrive_in_the_mailbox_with_their_ids() {
        let pool = Pool::new(2).unwrap();
        let mailbox = Mailbox::new().unwrap();
        let h = pool.handle(&mailbox, 7);
        let a = h.submit(Job { n: 10 });
        let b = h.submit(Job { n: 1 });
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 2 && std::time::Instant::now() < deadline {
            crate::serve::shutdown::poll_readable(
                &[mailbox.fd()],
                Some(deadline - std::time::Instant::now()),
            );
            got.extend(mailbox.take());
        }
        got.sort_by_key(|d| d.id);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].key, got[0].id, &got[0].reply[..]),
            (7, a, &b"55\n"[..])
        );
        assert_eq!((got[1].id, &got[1].reply[..]), (b, &b"1\n"[..]));
    }
}
