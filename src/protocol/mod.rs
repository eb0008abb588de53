//! Sans-I/O protocols: the talk's services as pure state machines.
//!
//! A server model owns the sockets; a protocol owns the meaning of the bytes. A model
//! feeds each chunk a read returned to [`Session::feed`] and sends back whatever the
//! session wrote into its [`Sink`]. No protocol here touches a socket, a thread or a
//! clock, so each is tested by feeding bytes (see the tests beside each module) and
//! every concurrency model in `src/models/` shares them unchanged.
//!
//! CPU-heavy work (fib) reaches the sink as a [`Job`] instead of bytes. The plain
//! `Vec<u8>` sink runs a job on the spot, which is the talk's behaviour: an event loop
//! that computes fib inline stalls every client. A model that offloads keeps its own
//! sink that queues jobs on a worker pool and restores request order itself.

pub mod echo;
pub mod fib;

pub use echo::Echo;
pub use fib::{DEFAULT_MAX_N, Fib, MAX_REQUEST_LEN};

/// What the transport should do after a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Send everything already written to the sink, then close the connection.
    /// Later input is ignored.
    Close,
}

/// A piece of CPU-bound work whose reply bytes may be computed on any thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The fib argument, already checked against the server's maximum.
    pub n: u32,
}

impl Job {
    /// Compute the reply: `fib(n)` in decimal and a newline, appended to `out`.
    pub fn run(&self, out: &mut Vec<u8>) {
        let value = crate::fib::work(self.n);
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(b'\n');
    }
}

/// Where a session writes its replies, in order.
pub trait Sink {
    /// Reply bytes ready now.
    fn bytes(&mut self, data: &[u8]);
    /// A reply that needs CPU work first; it takes its place in the reply order here.
    fn job(&mut self, job: Job);
}

/// The inline sink: jobs run immediately on the calling thread.
impl Sink for Vec<u8> {
    fn bytes(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
    fn job(&mut self, job: Job) {
        job.run(self);
    }
}

/// Which service a server speaks, with its settings. Cheap to clone; each
/// connection gets its own [`Session`] from [`ServiceSpec::session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSpec {
    /// The talk's echo: `prefix + chunk` for every chunk read.
    Echo { prefix: Vec<u8> },
    /// Line (or `?`) framed fib requests, answered with fib(n).
    Fib { max_n: u32 },
}

impl ServiceSpec {
    /// A fresh per-connection state machine.
    pub fn session(&self) -> Session {
        match self {
            ServiceSpec::Echo { prefix } => Session::Echo(Echo::new(prefix.clone())),
            ServiceSpec::Fib { max_n } => Session::Fib(Fib::new(*max_n)),
        }
    }

    /// The service's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceSpec::Echo { .. } => "echo",
            ServiceSpec::Fib { .. } => "fib",
        }
    }
}

/// One connection's protocol state: an enum rather than a trait object so the
/// per-read dispatch costs a branch, not an indirect call.
#[derive(Debug, Clone)]
pub enum Session {
    Echo(Echo),
    Fib(Fib),
}

impl Session {
    /// Feed the bytes one read returned; replies go to `sink`.
    pub fn feed(&mut self, input: &[u8], sink: &mut impl Sink) -> Flow {
        match self {
            Session::Echo(s) => s.feed(input, sink),
            Session::Fib(s) => s.feed(input, sink),
        }
    }

    /// The peer shut down its write side; anything still owed goes to `sink`.
    pub fn eof(&mut self, sink: &mut impl Sink) {
        match self {
            Session::Echo(_) => {}
            Session::Fib(s) => s.eof(sink),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Feed `chunks` one by one, then EOF; return all replies and whether it closed.
    pub fn run_chunks(mut session: Session, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for chunk in chunks {
            if session.feed(chunk, &mut out) == Flow::Close {
                return (out, true);
            }
        }
        session.eof(&mut out);
        (out, false)
    }

    /// Split `data` at the given cut points (taken modulo its length), in order.
    pub fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            if c > start {
                chunks.push(&data[start..c]);
                start = c;
            }
        }
        chunks
    }
}
