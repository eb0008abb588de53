//! The fib service: a request is a decimal `n` ended by `\n` (`\r\n` accepted) or by
//! `?` (the framing of the talk's `select` example); the reply is `fib(n)` in decimal
//! and `\n`.
//!
//! The talk's select server admits it is "sloppy - might not get entire question on
//! one recv call". This state machine is the fix: it keeps the unterminated tail of
//! each read and joins it with the next, so requests may arrive split across reads or
//! many in one read (pipelined). Replies come in request order, one per request.
//!
//! Rules, all independent of how the stream is chunked:
//! - blank requests (only spaces or tabs) are skipped: they are not requests, so they
//!   get no reply (`10?` typed at a terminal ends with Enter's newline, which must not
//!   draw an `ERR` after every answer);
//! - a request that is not a decimal number gets `ERR not a number: <first 32 bytes,
//!   escaped>` and the connection stays open;
//! - a number above the server's maximum gets `ERR n out of range 0..=MAX`;
//! - more than [`MAX_REQUEST_LEN`] bytes without a terminator gets
//!   `ERR request too long` and the connection closes, so memory per connection
//!   stays bounded whatever a client sends;
//! - an unterminated request at end of stream gets `ERR unterminated request at end of stream`.
//!
//! Before each request the parser asks the sink whether it is full (an offloading
//! sink with its share of fib jobs in flight) and, if so, stops right there: the
//! [`super::Session`] keeps the rest for later, so requests are never dropped and
//! one connection never has more than a few jobs queued.

use super::{Flow, Job, Sink};

/// The longest request, terminator excluded, kept while waiting for its terminator.
pub const MAX_REQUEST_LEN: usize = 64;

/// The default largest n a server computes: fib(42) holds one core for about 0.6 s
/// with naive recursion (fib(43) about 0.9 s), so no request holds a core for much
/// more than a second.
pub const DEFAULT_MAX_N: u32 = 42;

/// How much of a bad request is quoted back in the error line.
const QUOTE_LEN: usize = 32;

/// Per-connection fib state: the unterminated tail of the stream so far.
#[derive(Debug, Clone)]
pub struct Fib {
    max_n: u32,
    partial: Vec<u8>,
    closed: bool,
}

impl Fib {
    pub fn new(max_n: u32) -> Self {
        Fib {
            max_n,
            partial: Vec::new(),
            closed: false,
        }
    }

    /// Parse `input`: answer every complete request in it and keep the unterminated
    /// tail. Before each request it asks [`Sink::full`]; if the sink is full it stops
    /// there and returns how far it got with [`Flow::Paused`] (the caller keeps the
    /// rest and parses it again later: see [`super::Session`]). Otherwise it uses all
    /// of `input`.
    pub fn parse(&mut self, input: &[u8], sink: &mut impl Sink) -> (usize, Flow) {
        if self.closed {
            return (input.len(), Flow::Close);
        }
        let mut rest = input;
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'?') {
            if sink.full() {
                return (input.len() - rest.len(), Flow::Paused);
            }
            if self.partial.len() + i > MAX_REQUEST_LEN {
                return (input.len(), self.too_long(sink));
            }
            if self.partial.is_empty() {
                self.request(&rest[..i], rest[i], sink);
            } else {
                let mut request = std::mem::take(&mut self.partial);
                request.extend_from_slice(&rest[..i]);
                self.request(&request, rest[i], sink);
                request.clear();
                self.partial = request; // keep the allocation
            }
            rest = &rest[i + 1..];
        }
        if self.partial.len() + rest.len() > MAX_REQUEST_LEN {
            return (input.len(), self.too_long(sink));
        }
        self.partial.extend_from_slice(rest);
        (input.len(), Flow::Continue)
    }

    /// The client closed its write side: an unterminated tail is reported, not lost silently.
    pub fn eof(&mut self, sink: &mut impl Sink) {
        if !self.closed && !trim(&self.partial).is_empty() {
            sink.bytes(b"ERR unterminated request at end of stream\n");
        }
        self.partial.clear();
        self.closed = true;
    }

    fn too_long(&mut self, sink: &mut impl Sink) -> Flow {
        sink.bytes(b"ERR request too long\n");
        self.partial = Vec::new();
        self.closed = true;
        Flow::Close
    }

    /// Answer one complete request (terminator removed).
    fn request(&self, raw: &[u8], terminator: u8, sink: &mut impl Sink) {
        let raw = match (terminator, raw) {
            (b'\n', [head @ .., b'\r']) => head,
            _ => raw,
        };
        let text = trim(raw);
        if text.is_empty() {
            return;
        }
        if !text.iter().all(u8::is_ascii_digit) {
            let mut line = b"ERR not a number: ".to_vec();
            for &b in &text[..text.len().min(QUOTE_LEN)] {
                line.extend(std::ascii::escape_default(b));
            }
            line.push(b'\n');
            sink.bytes(&line);
            return;
        }
        let n = text.iter().try_fold(0u32, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        });
        match n {
            Some(n) if n <= self.max_n => sink.job(Job { n }),
            _ => sink.bytes(format!("ERR n out of range 0..={}\n", self.max_n).as_bytes()),
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        ServiceSpec,
        testutil::{Bounded, run_bounded, run_chunks, split},
    };
    use proptest::prelude::*;

    fn run(chunks: &[&[u8]]) -> (String, bool) {
        let spec = ServiceSpec::Fib { max_n: 30 };
        let (out, closed) = run_chunks(spec.session(), chunks);
        (String::from_utf8(out).unwrap(), closed)
    }

    #[test]
    fn one_request_per_line() {
        assert_eq!(run(&[b"10\n"]).0, "55\n");
        assert_eq!(run(&[b"1\n2\n3\n"]).0, "1\n1\n2\n");
        assert_eq!(run(&[b"0\n"]).0, "1\n", "the talk's fib(0) is 1");
    }

    #[test]
    fn crlf_and_question_mark_framing() {
        assert_eq!(run(&[b"10\r\n"]).0, "55\n");
        assert_eq!(run(&[b"10?11?"]).0, "55\n89\n");
        assert_eq!(run(&[b" 12 \t\n"]).0, "144\n");
    }

    #[test]
    fn split_request_is_joined() {
        assert_eq!(run(&[b"2", b"0", b"\n"]).0, "6765\n");
        assert_eq!(run(&[b"20\r", b"\n"]).0, "6765\n");
    }

    #[test]
    fn blank_lines_are_not_requests() {
        assert_eq!(run(&[b"\n\r\n  \n5?\n"]).0, "5\n");
    }

    #[test]
    fn not_a_number_keeps_connection() {
        let (out, closed) = run(&[b"abc\n7\n"]);
        assert_eq!(out, "ERR not a number: abc\n13\n");
        assert!(!closed);
        assert_eq!(run(&[b"-1\n"]).0, "ERR not a number: -1\n");
        assert_eq!(run(&[b"1 2\n"]).0, "ERR not a number: 1 2\n");
    }

    #[test]
    fn not_a_number_is_quoted_escaped_and_cut() {
        let (out, _) = run(&[b"\x00\xff\"x\n"]);
        assert_eq!(out, "ERR not a number: \\x00\\xff\\\"x\n");
        let long = [b'z'; 60];
        let (out, _) = run(&[&long, b"\n"]);
        assert_eq!(out, format!("ERR not a number: {}\n", "z".repeat(32)));
    }

    #[test]
    fn out_of_range() {
        assert_eq!(run(&[b"31\n"]).0, "ERR n out of range 0..=30\n");
        assert_eq!(
            run(&[b"99999999999999999999999\n"]).0,
            "ERR n out of range 0..=30\n"
        );
        assert_eq!(run(&[b"30\n"]).0, "832040\n");
    }

    #[test]
    fn too_long_closes_and_ignores_the_rest() {
        let long = vec![b'1'; MAX_REQUEST_LEN + 1];
        let (out, closed) = run(&[b"5\n", &long, b"\n6\n"]);
        assert_eq!(out, "5\nERR request too long\n");
        assert!(closed);
        let exactly = vec![b'0'; MAX_REQUEST_LEN];
        assert_eq!(
            run(&[&exactly, b"\n"]).0,
            "1\n",
            "64 bytes is still a request"
        );
    }

    #[test]
    fn too_long_without_terminator_is_bounded() {
        let mut session = ServiceSpec::Fib { max_n: 30 }.session();
        let mut out = Vec::new();
        let chunk = [b'7'; 1000];
        assert_eq!(session.feed(&chunk, &mut out), Flow::Close);
        assert_eq!(session.feed(&chunk, &mut out), Flow::Close);
        assert_eq!(out, b"ERR request too long\n");
    }

    #[test]
    fn unterminated_at_eof_is_reported() {
        assert_eq!(
            run(&[b"5\n12"]).0,
            "5\nERR unterminated request at end of stream\n"
        );
        assert_eq!(run(&[b"5\n  "]).0, "5\n");
    }

    #[test]
    fn jobs_reach_the_sink_in_order() {
        struct Record(Vec<String>);
        impl Sink for Record {
            fn bytes(&mut self, data: &[u8]) {
                self.0.push(String::from_utf8_lossy(data).into_owned());
            }
            fn job(&mut self, job: Job) {
                self.0.push(format!("job {}", job.n));
            }
        }
        let mut rec = Record(Vec::new());
        let mut session = Fib::new(30);
        assert_eq!(session.parse(b"3\nx\n4?", &mut rec), (6, Flow::Continue));
        assert_eq!(rec.0, ["job 3", "ERR not a number: x\n", "job 4"]);
    }

    fn request_stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            (0u32..=35).prop_map(|n| format!("{n}\n").into_bytes()),
            (0u32..=35).prop_map(|n| format!("{n}\r\n").into_bytes()),
            (0u32..=35).prop_map(|n| format!("{n}?").into_bytes()),
            Just(b"\n".to_vec()),
            "[a-z ]{0,40}\n".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..8),
            (60usize..70).prop_map(|len| vec![b'9'; len]),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_replies(data in request_stream(),
                                               cuts in proptest::collection::vec(any::<usize>(), 0..24)) {
            let whole = run_chunks(ServiceSpec::Fib { max_n: 30 }.session(), &[&data]);
            let chunked = run_chunks(ServiceSpec::Fib { max_n: 30 }.session(), &split(&data, &cuts));
            prop_assert_eq!(whole, chunked);
        }

        /// A sink of at most `cap` jobs: the session pauses before requests and
        /// resumes as jobs finish, wherever the chunks and the pauses fall, and the
        /// replies are those of the whole stream into a sink that is never full.
        #[test]
        fn pausing_anywhere_gives_the_same_replies(data in request_stream(),
                                                   cuts in proptest::collection::vec(any::<usize>(), 0..24),
                                                   cap in 1usize..5,
                                                   plan in proptest::collection::vec(any::<u8>(), 0..24)) {
            let spec = ServiceSpec::Fib { max_n: 30 };
            let mut whole = Bounded::new(usize::MAX);
            let mut session = spec.session();
            let closed = session.feed(&data, &mut whole) == Flow::Close;
            if !closed {
                session.eof(&mut whole);
            }
            let chunks = split(&data, &cuts);
            let (out, bounded_closed, most_held) = run_bounded(spec.session(), &chunks, cap, &plan);
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole.out));
            prop_assert_eq!(bounded_closed, closed);
            let longest = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
            prop_assert!(most_held <= longest, "held {} > a read of {}", most_held, longest);
        }
    }
}
