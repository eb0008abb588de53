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
//!
//! Back-pressure: an offloading sink takes only a few jobs per connection at a time
//! ([`Sink::full`]). A [`Session`] asks before each request; when the sink is full it
//! stops there, keeps the unparsed bytes and returns [`Flow::Paused`]. The model stops
//! reading that connection and calls [`Session::resume`] once a job has finished.
//! Without this one 16 KiB read of `42\n` would queue thousands of fib(42) jobs.
//! Whatever the chunking and wherever the pauses fall, the replies are the ones
//! feeding the whole stream at once would give (the tests below check that).

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
    /// The sink is full: the session stopped before a request and keeps the rest of
    /// the input. Stop reading; call [`Session::resume`] when the sink has room. Never
    /// returned for a sink that is never full (`Vec<u8>`).
    Paused,
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
    /// Whether the sink takes no more requests for now (an offloading sink with its
    /// share of jobs queued or running). Asked before each request.
    fn full(&self) -> bool {
        false
    }
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
            ServiceSpec::Echo { prefix } => Session::new(Parser::Echo(Echo::new(prefix.clone()))),
            ServiceSpec::Fib { max_n } => Session::new(Parser::Fib(Fib::new(*max_n))),
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

/// One connection's protocol state: the service's parser and the input it could
/// not parse yet because the sink was full.
#[derive(Debug, Clone)]
pub struct Session {
    parser: Parser,
    /// Input held while paused: `held[at..]` is not parsed yet. Empty when not paused
    /// (an idle connection keeps no buffer here).
    held: Vec<u8>,
    at: usize,
    /// End of stream arrived while input was held: report it once that is parsed.
    eof: bool,
}

/// The services' parsers: an enum rather than a trait object so the per-read
/// dispatch costs a branch, not an indirect call.
#[derive(Debug, Clone)]
enum Parser {
    Echo(Echo),
    Fib(Fib),
}

impl Session {
    fn new(parser: Parser) -> Session {
        Session {
            parser,
            held: Vec::new(),
            at: 0,
            eof: false,
        }
    }

    /// Feed the bytes one read returned; replies go to `sink`. While paused the bytes
    /// are only added to what is held (the caller should not be reading then; a read
    /// already under way is kept, not lost), then parsing resumes if the sink has room.
    pub fn feed(&mut self, input: &[u8], sink: &mut impl Sink) -> Flow {
        if self.is_paused() {
            self.held.extend_from_slice(input);
            return self.resume(sink);
        }
        let (used, flow) = self.parse(input, sink);
        if flow == Flow::Paused {
            self.held.extend_from_slice(&input[used..]);
        }
        flow
    }

    /// Go on parsing the held input (the sink may have room again). `Paused` if the
    /// sink filled up again; otherwise everything held is parsed (and a held end of
    /// stream reported) and the caller may read again.
    pub fn resume(&mut self, sink: &mut impl Sink) -> Flow {
        if !self.is_paused() {
            return Flow::Continue;
        }
        let held = std::mem::take(&mut self.held);
        let (used, flow) = self.parse(&held[self.at..], sink);
        if flow == Flow::Paused {
            self.at += used;
            self.held = held;
            return flow;
        }
        self.at = 0; // all parsed; the buffer is dropped
        if std::mem::take(&mut self.eof) && flow != Flow::Close {
            self.parser_eof(sink);
        }
        flow
    }

    /// The peer shut down its write side; anything still owed goes to `sink` (after
    /// the held input, if paused: then on a later [`Session::resume`]).
    pub fn eof(&mut self, sink: &mut impl Sink) {
        if self.is_paused() {
            self.eof = true;
        } else {
            self.parser_eof(sink);
        }
    }

    /// Whether input (or the end of stream) waits for room in the sink.
    pub fn is_paused(&self) -> bool {
        self.at < self.held.len() || self.eof
    }

    /// Bytes of input held unparsed.
    pub fn held(&self) -> usize {
        self.held.len() - self.at
    }

    /// One parser pass over `input`: how many bytes it used, and the flow. It pauses
    /// only before a request, so a pause always leaves bytes over.
    fn parse(&mut self, input: &[u8], sink: &mut impl Sink) -> (usize, Flow) {
        let (used, flow) = match &mut self.parser {
            Parser::Echo(s) => s.parse(input, sink),
            Parser::Fib(s) => s.parse(input, sink),
        };
        debug_assert!(flow != Flow::Paused || used < input.len());
        (used, flow)
    }

    fn parser_eof(&mut self, sink: &mut impl Sink) {
        match &mut self.parser {
            Parser::Echo(_) => {}
            Parser::Fib(s) => s.eof(sink),
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

    /// A sink that records replies in order, a job as `job(n)` (not computed), and
    /// is full while `cap` jobs are outstanding, as an offloading sink is.
    pub struct Bounded {
        pub out: Vec<u8>,
        pub outstanding: usize,
        pub cap: usize,
    }

    impl Bounded {
        pub fn new(cap: usize) -> Bounded {
            Bounded {
                out: Vec::new(),
                outstanding: 0,
                cap,
            }
        }
    }

    impl Sink for Bounded {
        fn bytes(&mut self, data: &[u8]) {
            self.out.extend_from_slice(data);
        }
        fn job(&mut self, job: Job) {
            assert!(self.outstanding < self.cap, "a job past the limit");
            self.outstanding += 1;
            self.out
                .extend_from_slice(format!("job({})\n", job.n).as_bytes());
        }
        fn full(&self) -> bool {
            self.outstanding >= self.cap
        }
    }

    /// What a model does with a sink of at most `cap` jobs: feed each chunk, and
    /// while the session is paused let one job finish and resume it. `plan[i]`
    /// (cycled) says what happens before chunk `i`: bit 0 set = feed it even if
    /// paused (a read that was already under way), bits 1..3 = that many jobs finish
    /// first. Returns the replies, whether it closed, and the most input ever held
    /// right after a feed made while not paused.
    pub fn run_bounded(
        mut session: Session,
        chunks: &[&[u8]],
        cap: usize,
        plan: &[u8],
    ) -> (Vec<u8>, bool, usize) {
        let mut sink = Bounded::new(cap);
        let mut most_held = 0;
        let finish = |sink: &mut Bounded, session: &mut Session, n: usize| {
            for _ in 0..n {
                if sink.outstanding == 0 {
                    break;
                }
                sink.outstanding -= 1;
                if session.resume(sink) == Flow::Close {
                    return true;
                }
            }
            false
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let step = plan.get(i % plan.len().max(1)).copied().unwrap_or(0);
            if finish(&mut sink, &mut session, usize::from(step >> 1 & 3)) {
                return (sink.out, true, most_held);
            }
            let late = step & 1 == 1 && session.is_paused();
            while !late && session.is_paused() {
                assert!(sink.outstanding > 0, "paused with no job to wait for");
                if finish(&mut sink, &mut session, 1) {
                    return (sink.out, true, most_held);
                }
            }
            if session.feed(chunk, &mut sink) == Flow::Close {
                return (sink.out, true, most_held);
            }
            if !late {
                most_held = most_held.max(session.held());
            }
        }
        session.eof(&mut sink);
        while session.is_paused() {
            assert!(sink.outstanding > 0, "paused with no job to wait for");
            if finish(&mut sink, &mut session, 1) {
                return (sink.out, true, most_held);
            }
        }
        (sink.out, false, most_held)
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

#[cfg(test)]
mod tests {
    use super::testutil::Bounded;
    use super::*;

    fn fib() -> Session {
        ServiceSpec::Fib { max_n: 30 }.session()
    }

    #[test]
    fn a_full_sink_pauses_mid_buffer_and_keeps_the_rest() {
        let mut s = fib();
        let mut sink = Bounded::new(3);
        assert_eq!(s.feed(b"20\n1\n21\n22\n23", &mut sink), Flow::Paused);
        assert_eq!(sink.out, b"job(20)\njob(1)\njob(21)\n");
        assert_eq!(s.held(), b"22\n23".len());
        assert_eq!(s.resume(&mut sink), Flow::Paused, "still full");
        sink.outstanding -= 1;
        assert_eq!(s.resume(&mut sink), Flow::Continue, "23 is only a partial");
        assert_eq!(sink.out, b"job(20)\njob(1)\njob(21)\njob(22)\n");
        assert!(!s.is_paused());
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn eof_while_paused_waits_for_the_held_input() {
        let mut s = fib();
        let mut sink = Bounded::new(1);
        assert_eq!(s.feed(b"20\n21\n7", &mut sink), Flow::Paused);
        s.eof(&mut sink);
        assert!(s.is_paused());
        assert_eq!(sink.out, b"job(20)\n", "nothing reported early");
        sink.outstanding = 0;
        assert_eq!(s.resume(&mut sink), Flow::Continue);
        assert_eq!(
            sink.out,
            b"job(20)\njob(21)\nERR unterminated request at end of stream\n"
        );
        assert!(!s.is_paused());
    }

    #[test]
    fn input_fed_while_paused_is_kept_in_order() {
        let mut s = fib();
        let mut sink = Bounded::new(1);
        assert_eq!(s.feed(b"20\n2", &mut sink), Flow::Continue);
        assert_eq!(s.feed(b"1\n22\n", &mut sink), Flow::Paused);
        assert_eq!(s.feed(b"23\n", &mut sink), Flow::Paused);
        assert_eq!(s.held(), b"1\n22\n23\n".len(), "the 2 is a partial request");
        while s.is_paused() {
            sink.outstanding = 0;
            s.resume(&mut sink);
        }
        assert_eq!(sink.out, b"job(20)\njob(21)\njob(22)\njob(23)\n");
    }

    #[test]
    fn too_long_while_resuming_closes() {
        let mut s = fib();
        let mut sink = Bounded::new(1);
        let mut input = b"20\n".to_vec();
        input.extend_from_slice(&[b'1'; MAX_REQUEST_LEN + 1]);
        input.extend_from_slice(b"\n5\n");
        assert_eq!(s.feed(&input, &mut sink), Flow::Paused);
        sink.outstanding = 0;
        assert_eq!(s.resume(&mut sink), Flow::Close);
        assert_eq!(sink.out, b"job(20)\nERR request too long\n");
        assert!(!s.is_paused());
        assert_eq!(s.feed(b"1\n", &mut sink), Flow::Close);
    }

    #[test]
    fn echo_pauses_whole_reads() {
        let mut s = ServiceSpec::Echo {
            prefix: b"> ".to_vec(),
        }
        .session();
        let mut sink = Bounded::new(0); // always full
        assert_eq!(s.feed(b"ab", &mut sink), Flow::Paused);
        assert_eq!(s.feed(b"cd", &mut sink), Flow::Paused);
        assert!(sink.out.is_empty());
        sink.cap = 1;
        assert_eq!(s.resume(&mut sink), Flow::Continue);
        assert_eq!(sink.out, b"> abcd");
    }
}
