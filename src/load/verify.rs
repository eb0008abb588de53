//! Sans-I/O reply verifiers: is the byte stream a server sent back exactly right?
//!
//! TCP has no messages, so a verifier never assumes a reply arrives in one read. It
//! is fed whatever each client-side read returned and keeps just enough state to
//! judge the next byte: it knows every request the connection sent, so it knows
//! every byte a correct server may send next. The first byte that cannot belong to
//! any correct reply stream is a [`Mismatch`], reported with its offset in the
//! connection's reply stream.
//!
//! - [`EchoVerifier`]: the talk's echo server sends `prefix + chunk` once per
//!   *server-side* read, so the prefix may appear anywhere in the reply stream, as
//!   often as the server's reads were split. Payload bytes are drawn from an alphabet
//!   that never holds the prefix's first byte, so that byte always means "a prefix
//!   starts here" and the payload is compared exactly, byte for byte.
//! - [`FibVerifier`]: every request asks the same `n`, so every reply is the same
//!   line `fib(n)\n`, computed once with the exact fib and compared byte for byte.
//!
//! Neither allocates per request: payloads are windows into one shared random
//! [`PayloadPool`], chosen by request number, so the sender and the verifier agree
//! on request k's bytes without remembering them.
//!
//! A single wrong byte rarely tells a user what went wrong; the line it belongs to
//! does (`ERR n out of range 0..=42` from a fib server asked fib(43), say). So a
//! [`Mismatch`] also carries the server's [`Line`]: what it sent from the start of the
//! line (fib) or reply (echo: its prefix, or the start of the request's payload) the bad
//! byte belongs to, then on to the line's newline, at most [`LINE_MAX`] bytes. The
//! part before the bad byte was verified, so the verifier rebuilds it from what it
//! expected instead of keeping a copy of every byte it reads; the part after is
//! whatever the server sent next, which may come in later reads: the caller feeds
//! them to [`Line::more`] until [`Line::done`]. Any chunking of the same stream gives
//! the same line.

use std::sync::Arc;

/// The first byte at which a reply stream went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the request whose reply was being read (0-based, per connection).
    pub request: u64,
    /// Byte offset in the connection's reply stream.
    pub offset: u64,
    /// The byte a correct server could have sent here (`None`: nothing was owed).
    pub expected: Option<u8>,
    /// The byte received.
    pub got: u8,
    /// The server's line around that byte (see the module doc); feed it what the
    /// connection receives next until it is [`Line::done`].
    pub line: Line,
}

/// The most a [`Line`] keeps of what the server sent.
pub const LINE_MAX: usize = 200;

/// The most a [`Line`] keeps of what came before the bad byte (the rest is left for
/// what follows it, where an error message is).
pub const BEFORE_MAX: usize = 100;

/// What the server sent around a mismatch: from the start of its line (or echo reply)
/// to the newline that ends it (not kept), at most [`LINE_MAX`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line {
    /// Offset of `bytes[0]` in the connection's reply stream.
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// A newline ended it (otherwise it was cut at [`LINE_MAX`], or is still open).
    pub ended: bool,
}

impl Line {
    /// The line so far: `before` (verified bytes just before the bad one, of which the
    /// last [`BEFORE_MAX`] are kept) ends at stream offset `at`, then `rest` (the bad
    /// byte and whatever followed it in the same read).
    fn starting(before: &[u8], at: u64, rest: &[u8]) -> Line {
        let before = &before[before.len().saturating_sub(BEFORE_MAX)..];
        let mut line = Line {
            offset: at - before.len() as u64,
            bytes: Vec::with_capacity(LINE_MAX),
            ended: false,
        };
        line.bytes.extend_from_slice(before);
        line.more(rest);
        line
    }

    /// Nothing more belongs to it: its newline came, or it is [`LINE_MAX`] long.
    pub fn done(&self) -> bool {
        self.ended || self.bytes.len() >= LINE_MAX
    }

    /// Take the next bytes the server sent (from a later read); returns
    /// [`Line::done`]. Bytes past the line's end are ignored.
    pub fn more(&mut self, data: &[u8]) -> bool {
        if !self.done() {
            let room = LINE_MAX - self.bytes.len();
            let data = &data[..data.len().min(room)];
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.bytes.extend_from_slice(&data[..i]);
                    self.ended = true;
                }
                None => self.bytes.extend_from_slice(data),
            }
        }
        self.done()
    }

    /// The bytes, printable: ASCII as is, `\n`, `\"`, `\xff` and so on escaped.
    pub fn escaped(&self) -> String {
        self.bytes.escape_ascii().to_string()
    }
}

/// Where two equally long slices first differ: one `memcmp` in the common case
/// (equal), a byte loop only to locate a difference.
#[inline]
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    if got == want {
        None
    } else {
        got.iter().zip(want).position(|(a, b)| a != b)
    }
}

/// Payload characters: ASCII letters and digits, so a mismatch is readable.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// How far apart consecutive requests' windows start in the pool (a prime, so
/// windows rarely repeat).
const STRIDE: u64 = 8191;

/// One block of random payload bytes shared by every connection of a run; request
/// `k` of a connection with seed `s` sends the window at `(s + k * STRIDE) mod room`.
#[derive(Debug, Clone)]
pub struct PayloadPool {
    bytes: Arc<[u8]>,
    size: usize,
}

impl PayloadPool {
    /// Random bytes for payloads of `size`, none equal to `prefix[0]`.
    pub fn new(size: usize, prefix: &[u8], seed: u64) -> Self {
        let alphabet: Vec<u8> = ALPHABET
            .iter()
            .copied()
            .filter(|&b| prefix.first() != Some(&b))
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let len = size + 65_536;
        let bytes: Arc<[u8]> = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        PayloadPool { bytes, size }
    }

    /// The payload size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The payload of request `k` on a connection with seed `seed`.
    #[inline]
    pub fn payload(&self, seed: u64, k: u64) -> &[u8] {
        let room = (self.bytes.len() - self.size + 1) as u64;
        let start = (seed.wrapping_add(k.wrapping_mul(STRIDE)) % room) as usize;
        &self.bytes[start..start + self.size]
    }
}

/// Verifies an echo reply stream: payload bytes in order, with the prefix allowed
/// before any of them (where the server's reads were split), but required first.
#[derive(Debug, Clone)]
pub struct EchoVerifier {
    pool: PayloadPool,
    seed: u64,
    prefix: Arc<[u8]>,
    /// Bytes of the prefix matched so far (0: not inside a prefix).
    in_prefix: usize,
    /// Where the last complete prefix ended: (request, offset in its payload). Only
    /// to rebuild a mismatch's [`Line`]; set once per prefix, not per byte.
    after_prefix: Option<(u64, usize)>,
    pos: Cursor,
}

/// Where a verifier stands in the reply stream.
#[derive(Debug, Clone, Default)]
struct Cursor {
    /// The request whose reply is being received, and the offset in that reply.
    request: u64,
    at: usize,
    /// Bytes consumed from the reply stream.
    offset: u64,
}

impl Cursor {
    /// Compare `data` with `expected` (the same length, the current reply's next bytes)
    /// and move past them; a reply of `reply_len` bytes completes when `at` reaches it.
    /// On a difference, returns its index in `data` and leaves the cursor where it was.
    #[inline]
    fn advance(&mut self, data: &[u8], expected: &[u8], reply_len: usize) -> Result<(), usize> {
        if let Some(i) = first_difference(data, expected) {
            return Err(i);
        }
        self.at += data.len();
        self.offset += data.len() as u64;
        if self.at == reply_len {
            self.at = 0;
            self.request += 1;
        }
        Ok(())
    }

    /// A mismatch at `rest[0]`, `i` bytes past the current offset; `before` is what the
    /// server sent of the line just before it (see [`Line`]).
    #[cold]
    fn mismatch(&self, i: usize, expected: Option<u8>, before: &[u8], rest: &[u8]) -> Mismatch {
        let offset = self.offset + i as u64;
        Mismatch {
            request: self.request,
            offset,
            expected,
            got: rest[0],
            line: Line::starting(before, offset, rest),
        }
    }
}

impl EchoVerifier {
    pub fn new(pool: PayloadPool, seed: u64, prefix: Arc<[u8]>) -> Self {
        EchoVerifier {
            pool,
            seed,
            prefix,
            in_prefix: 0,
            after_prefix: None,
            pos: Cursor::default(),
        }
    }

    /// Check one chunk of reply. `sent` is how many requests were sent so far; a
    /// byte beyond them is a mismatch. Returns how many requests completed.
    pub fn feed(&mut self, mut data: &[u8], sent: u64) -> Result<u64, Mismatch> {
        let before = self.pos.request;
        let prefix = &*self.prefix;
        while !data.is_empty() {
            if self.in_prefix > 0 {
                // Inside a prefix: match as much of its rest as this chunk holds.
                let want = &prefix[self.in_prefix..];
                let n = want.len().min(data.len());
                if let Some(i) = first_difference(&data[..n], &want[..n]) {
                    let seen = &prefix[..self.in_prefix + i];
                    return Err(self.pos.mismatch(i, Some(want[i]), seen, &data[i..]));
                }
                self.in_prefix = (self.in_prefix + n) % prefix.len();
                self.pos.offset += n as u64;
                data = &data[n..];
                if self.in_prefix == 0 {
                    self.after_prefix = Some((self.pos.request, self.pos.at));
                }
                continue;
            }
            if !prefix.is_empty() && data[0] == prefix[0] {
                self.in_prefix = 1 % prefix.len();
                self.pos.offset += 1;
                data = &data[1..];
                if self.in_prefix == 0 {
                    self.after_prefix = Some((self.pos.request, self.pos.at));
                }
                continue;
            }
            if !prefix.is_empty() && self.pos.offset == 0 {
                return Err(self.pos.mismatch(0, Some(prefix[0]), &[], data));
            }
            if self.pos.request >= sent {
                return Err(self.mismatch(0, None, data));
            }
            // Payload bytes up to the next possible prefix or the end of this request.
            let expected = &self.pool.payload(self.seed, self.pos.request)[self.pos.at..];
            let mut n = expected.len().min(data.len());
            if let Some(p) = prefix.first()
                && let Some(i) = data[..n].iter().position(|b| b == p)
            {
                n = i;
            }
            if let Err(i) = self
                .pos
                .advance(&data[..n], &expected[..n], self.pool.size())
            {
                return Err(self.mismatch(i, Some(expected[i]), &data[i..]));
            }
            data = &data[n..];
        }
        Ok(self.pos.request - before)
    }

    /// A mismatch in the payload, `i` bytes past the current position, at `rest[0]`.
    /// The line before it is this reply's: the prefix that began it and the payload
    /// since, if that prefix ended inside the current request; else the request's
    /// payload so far (a reply that began with an earlier request is cut there).
    #[cold]
    fn mismatch(&self, i: usize, expected: Option<u8>, rest: &[u8]) -> Mismatch {
        let request = self.pos.request;
        let upto = self.pos.at + i;
        let payload = &self.pool.payload(self.seed, request)[..upto];
        let before = match self.after_prefix {
            Some((r, from)) if r == request => {
                let from = from.max(upto.saturating_sub(BEFORE_MAX));
                [&self.prefix[..], &payload[from..]].concat()
            }
            _ => payload[upto.saturating_sub(BEFORE_MAX)..].to_vec(),
        };
        self.pos.mismatch(i, expected, &before, rest)
    }
}

/// Verifies a fib reply stream: the same line `fib(n)\n` once per request.
#[derive(Debug, Clone)]
pub struct FibVerifier {
    line: Arc<[u8]>,
    pos: Cursor,
}

impl FibVerifier {
    /// A verifier for replies to fib(`n`), as the talk defines it (fib(0) = 1).
    pub fn new(n: u32) -> Self {
        let line: Arc<[u8]> = format!("{}\n", crate::fib::exact(n)).into_bytes().into();
        FibVerifier {
            line,
            pos: Cursor::default(),
        }
    }

    /// The request line to send for `n`: `n\n`, or `n?` in the talk's select framing.
    pub fn request_line(n: u32, question: bool) -> Vec<u8> {
        format!("{n}{}", if question { '?' } else { '\n' }).into_bytes()
    }

    /// Check one chunk of reply; returns how many requests completed.
    pub fn feed(&mut self, mut data: &[u8], sent: u64) -> Result<u64, Mismatch> {
        let before = self.pos.request;
        while !data.is_empty() {
            if self.pos.request >= sent {
                return Err(self.pos.mismatch(0, None, &[], data));
            }
            let want = &self.line[self.pos.at..];
            let n = want.len().min(data.len());
            if let Err(i) = self.pos.advance(&data[..n], &want[..n], self.line.len()) {
                // The line so far was verified: it is the expected line's start.
                let before = &self.line[..self.pos.at + i];
                return Err(self.pos.mismatch(i, Some(want[i]), before, &data[i..]));
            }
            data = &data[n..];
        }
        Ok(self.pos.request - before)
    }
}

/// Either verifier, dispatched by a branch rather than a virtual call.
#[derive(Debug, Clone)]
pub enum Verifier {
    Echo(EchoVerifier),
    Fib(FibVerifier),
}

impl Verifier {
    /// Check one chunk of reply; returns how many requests completed.
    #[inline]
    pub fn feed(&mut self, data: &[u8], sent: u64) -> Result<u64, Mismatch> {
        match self {
            Verifier::Echo(v) => v.feed(data, sent),
            Verifier::Fib(v) => v.feed(data, sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Flow, ServiceSpec};
    use proptest::prelude::*;

    const TALK: &[u8] = b"Received: ";

    /// Cut `data` at the given points (modulo its length).
    fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            if c > start {
                out.push(data[start..c].to_vec());
                start = c;
            }
        }
        out
    }

    /// What the talk's server sends back for `requests` read in `server_cuts` chunks.
    fn serve(spec: &ServiceSpec, stream: &[u8], server_cuts: &[usize]) -> Vec<u8> {
        let mut session = spec.session();
        let mut out = Vec::new();
        for chunk in split(stream, server_cuts) {
            assert_eq!(session.feed(&chunk, &mut out), Flow::Continue);
        }
        out
    }

    /// Feed `chunks` as a client would: until a mismatch, then the rest to its line
    /// until the line is done.
    fn settle(v: &mut Verifier, chunks: &[Vec<u8>], sent: u64) -> Option<Mismatch> {
        let mut found: Option<Mismatch> = None;
        for chunk in chunks {
            match &mut found {
                Some(m) => {
                    if m.line.more(chunk) {
                        break;
                    }
                }
                None => found = v.feed(chunk, sent).err(),
            }
        }
        found
    }

    fn echo_requests(pool: &PayloadPool, seed: u64, count: u64) -> Vec<u8> {
        (0..count)
            .flat_map(|k| pool.payload(seed, k).to_vec())
            .collect()
    }

    #[test]
    fn payloads_avoid_the_prefix_start() {
        let pool = PayloadPool::new(100, TALK, 7);
        assert!((0..1000).all(|k| !pool.payload(3, k).contains(&b'R')));
        assert_ne!(pool.payload(3, 0), pool.payload(3, 1));
    }

    #[test]
    fn echo_whole_reply() {
        let pool = PayloadPool::new(8, TALK, 1);
        let mut v = EchoVerifier::new(pool.clone(), 0, TALK.into());
        let mut reply = TALK.to_vec();
        reply.extend_from_slice(pool.payload(0, 0));
        assert_eq!(v.feed(&reply, 1), Ok(1));
    }

    #[test]
    fn echo_reports_first_bad_byte() {
        let pool = PayloadPool::new(8, TALK, 1);
        let mut v = EchoVerifier::new(pool.clone(), 0, TALK.into());
        let mut reply = TALK.to_vec();
        reply.extend_from_slice(pool.payload(0, 0));
        let good = reply[13];
        reply[13] = b'#';
        let m = v.feed(&reply, 1).unwrap_err();
        assert_eq!(
            m,
            Mismatch {
                request: 0,
                offset: 13,
                expected: Some(good),
                got: b'#',
                // The reply from its prefix on, as the server sent it.
                line: Line {
                    offset: 0,
                    bytes: reply.clone(),
                    ended: false
                }
            }
        );
    }

    #[test]
    fn echo_needs_the_prefix_first_and_nothing_extra() {
        let pool = PayloadPool::new(4, TALK, 1);
        let mut v = EchoVerifier::new(pool.clone(), 0, TALK.into());
        let m = v.feed(pool.payload(0, 0), 1).unwrap_err();
        assert_eq!((m.offset, m.expected), (0, Some(b'R')));
        let mut v = EchoVerifier::new(pool.clone(), 0, TALK.into());
        let mut reply = TALK.to_vec();
        reply.extend_from_slice(pool.payload(0, 0));
        reply.push(b'x');
        let m = v.feed(&reply, 1).unwrap_err();
        assert_eq!((m.request, m.offset, m.expected), (1, 14, None));
    }

    #[test]
    fn broken_prefix_is_a_mismatch() {
        let pool = PayloadPool::new(4, TALK, 1);
        let mut v = EchoVerifier::new(pool, 0, TALK.into());
        let m = v.feed(b"Rec!", 1).unwrap_err();
        assert_eq!((m.offset, m.expected, m.got), (3, Some(b'e'), b'!'));
    }

    #[test]
    fn a_bad_byte_after_a_split_prefix_shows_the_reply_from_that_prefix() {
        // The server read "ab" then "cd": "Received: ab" "Received: c#".
        let pool = PayloadPool::new(4, TALK, 1);
        let p = pool.payload(0, 0).to_vec();
        let mut stream = [TALK, &p[..2], TALK, &p[2..3], b"#"].concat();
        stream.extend_from_slice(b"more");
        let mut v = EchoVerifier::new(pool, 0, TALK.into());
        let m = v.feed(&stream, 1).unwrap_err();
        assert_eq!((m.offset, m.got), (10 + 2 + 10 + 1, b'#'));
        assert_eq!(m.line.offset, 12, "the line starts at the second prefix");
        assert_eq!(m.line.bytes, [TALK, &p[2..3], b"#more"].concat());
        assert!(!m.line.ended && !m.line.done(), "no newline yet, room left");
    }

    #[test]
    fn a_long_reply_keeps_the_bytes_nearest_the_bad_one() {
        let pool = PayloadPool::new(1000, TALK, 1);
        let mut reply = [TALK, pool.payload(0, 0)].concat();
        reply[10 + 500] = b'#';
        let mut v = EchoVerifier::new(pool, 0, TALK.into());
        let m = v.feed(&reply, 1).unwrap_err();
        assert_eq!(m.line.offset, (10 + 500 - BEFORE_MAX) as u64);
        assert_eq!(m.line.bytes.len(), LINE_MAX);
        assert_eq!(m.line.bytes[..], reply[10 + 500 - BEFORE_MAX..][..LINE_MAX]);
        assert!(m.line.done() && !m.line.ended);
        // Done: later bytes change nothing.
        let mut line = m.line.clone();
        assert!(line.more(b"ERR late\n"));
        assert_eq!(line, m.line);
    }

    #[test]
    fn an_echo_client_shown_a_fib_servers_error_line() {
        let pool = PayloadPool::new(8, TALK, 1);
        let mut v = EchoVerifier::new(pool, 0, TALK.into());
        let m = v.feed(b"ERR not a number: \"\xff\"\nERR", 1).unwrap_err();
        assert_eq!((m.offset, m.expected, m.got), (0, Some(b'R'), b'E'));
        assert_eq!(m.line.bytes, b"ERR not a number: \"\xff\"");
        assert!(m.line.ended);
        assert_eq!(m.line.escaped(), r#"ERR not a number: \"\xff\""#);
    }

    #[test]
    fn fib_lines() {
        let mut v = FibVerifier::new(10);
        assert_eq!(v.feed(b"55\n5", 2), Ok(1));
        assert_eq!(v.feed(b"5\n", 2), Ok(1));
        let m = v.feed(b"5", 2).unwrap_err();
        assert_eq!((m.request, m.expected), (2, None));
        let mut v = FibVerifier::new(0);
        assert_eq!(v.feed(b"1\n", 1), Ok(1), "the talk's fib(0) is 1");
    }

    #[test]
    fn fib_missing_newline_shows_at_the_next_reply() {
        let mut v = FibVerifier::new(10);
        let m = v.feed(b"5555\n", 2).unwrap_err();
        assert_eq!(
            m,
            Mismatch {
                request: 0,
                offset: 2,
                expected: Some(b'\n'),
                got: b'5',
                line: Line {
                    offset: 0,
                    bytes: b"5555".to_vec(),
                    ended: true
                }
            }
        );
    }

    #[test]
    fn server_chunk_boundary_at_every_position() {
        let pool = PayloadPool::new(64, TALK, 9);
        let spec = ServiceSpec::Echo {
            prefix: TALK.to_vec(),
        };
        let stream = echo_requests(&pool, 5, 3);
        for cut in 0..=stream.len() {
            let reply = serve(&spec, &stream, &[cut]);
            let mut v = EchoVerifier::new(pool.clone(), 5, TALK.into());
            assert_eq!(v.feed(&reply, 3), Ok(3), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn echo_any_chunking_verifies(size in 1usize..100, count in 1u64..8, seed in any::<u64>(),
                                      server_cuts in proptest::collection::vec(any::<usize>(), 0..20),
                                      client_cuts in proptest::collection::vec(any::<usize>(), 0..20),
                                      plain in any::<bool>()) {
            let prefix: &[u8] = if plain { b"" } else { TALK };
            let pool = PayloadPool::new(size, prefix, seed);
            let spec = ServiceSpec::Echo { prefix: prefix.to_vec() };
            let stream = echo_requests(&pool, seed, count);
            let reply = serve(&spec, &stream, &server_cuts);
            let mut v = EchoVerifier::new(pool, seed, prefix.into());
            let mut done = 0;
            for chunk in split(&reply, &client_cuts) {
                done += v.feed(&chunk, count).unwrap();
            }
            prop_assert_eq!(done, count);
        }

        #[test]
        fn echo_any_corruption_is_found_at_its_offset(size in 1usize..50, count in 1u64..5,
                                                      server_cuts in proptest::collection::vec(any::<usize>(), 0..10),
                                                      client_cuts in proptest::collection::vec(any::<usize>(), 0..10),
                                                      at in any::<usize>()) {
            let pool = PayloadPool::new(size, TALK, 3);
            let spec = ServiceSpec::Echo { prefix: TALK.to_vec() };
            let mut reply = serve(&spec, &echo_requests(&pool, 0, count), &server_cuts);
            let at = at % reply.len();
            reply[at] = b'#';
            let mut v = EchoVerifier::new(pool, 0, TALK.into());
            let mut found = None;
            for chunk in split(&reply, &client_cuts) {
                if let Err(m) = v.feed(&chunk, count) {
                    found = Some(m);
                    break;
                }
            }
            let m = found.expect("corruption missed");
            prop_assert_eq!(m.offset, at as u64);
            prop_assert_eq!(m.got, b'#');
        }

        /// A fib server asked an n above its maximum answers an error line; the
        /// mismatch shows that line whole, however the reads cut it.
        #[test]
        fn fib_error_line_is_whole_in_any_chunking(n in 31u32..=185, count in 1u64..6,
                                                   question in any::<bool>(),
                                                   server_cuts in proptest::collection::vec(any::<usize>(), 0..20),
                                                   client_cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            let spec = ServiceSpec::Fib { max_n: 30 };
            let stream: Vec<u8> = (0..count).flat_map(|_| FibVerifier::request_line(n, question)).collect();
            let reply = serve(&spec, &stream, &server_cuts);
            let m = settle(&mut Verifier::Fib(FibVerifier::new(n)), &split(&reply, &client_cuts), count)
                .expect("an error line is a mismatch");
            let first_digit = crate::fib::exact(n).to_string().as_bytes()[0];
            prop_assert_eq!((m.request, m.offset, m.expected, m.got), (0, 0, Some(first_digit), b'E'));
            prop_assert_eq!(&m.line.bytes[..], b"ERR n out of range 0..=30");
            prop_assert!(m.line.ended);
            prop_assert_eq!(m.line.offset, 0);
        }

        /// Any stream, corrupted anywhere (a byte replaced, or an error line put in
        /// between two replies), cut anywhere: the mismatch and its line, completed
        /// from the reads that follow, are those of the stream read whole.
        #[test]
        fn a_mismatch_and_its_line_do_not_depend_on_the_reads(
            fib_service in any::<bool>(), size in 1usize..300, count in 1u64..6,
            server_cuts in proptest::collection::vec(any::<usize>(), 0..10),
            client_cuts in proptest::collection::vec(any::<usize>(), 0..30),
            at in any::<usize>(), with in any::<u8>(), insert in any::<bool>()) {
            let (spec, stream, verifier) = if fib_service {
                let n = (size % 25) as u32; // the server computes the naive fib
                let stream: Vec<u8> = (0..count).flat_map(|_| FibVerifier::request_line(n, false)).collect();
                (ServiceSpec::Fib { max_n: 90 }, stream, Verifier::Fib(FibVerifier::new(n)))
            } else {
                let pool = PayloadPool::new(size, TALK, 5);
                let stream = echo_requests(&pool, 0, count);
                (ServiceSpec::Echo { prefix: TALK.to_vec() }, stream,
                 Verifier::Echo(EchoVerifier::new(pool, 0, TALK.into())))
            };
            let mut reply = serve(&spec, &stream, &server_cuts);
            let at = at % (reply.len() + 1);
            if insert {
                reply.splice(at..at, b"ERR something went wrong\n".iter().copied());
            } else if at < reply.len() && reply[at] != with {
                reply[at] = with;
            } else {
                reply.push(with);
            }
            let whole = settle(&mut verifier.clone(), &[reply.clone()], count);
            let chunked = settle(&mut verifier.clone(), &split(&reply, &client_cuts), count);
            prop_assert_eq!(&chunked, &whole);
            let m = whole.expect("the change is found");
            prop_assert!(m.line.offset <= m.offset);
            prop_assert!(m.line.bytes.len() <= LINE_MAX);
            // The line is what the server sent there, byte for byte.
            let start = m.line.offset as usize;
            prop_assert_eq!(&reply[start..start + m.line.bytes.len()], &m.line.bytes[..]);
            prop_assert_eq!(reply[m.offset as usize], m.got);
        }

        #[test]
        fn fib_any_chunking_verifies(n in 0u32..25, count in 1u64..10, question in any::<bool>(),
                                     server_cuts in proptest::collection::vec(any::<usize>(), 0..20),
                                     client_cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
            let spec = ServiceSpec::Fib { max_n: 30 };
            let stream: Vec<u8> = (0..count).flat_map(|_| FibVerifier::request_line(n, question)).collect();
            let reply = serve(&spec, &stream, &server_cuts);
            let mut v = FibVerifier::new(n);
            let mut done = 0;
            for chunk in split(&reply, &client_cuts) {
                done += v.feed(&chunk, count).unwrap();
            }
            prop_assert_eq!(done, count);
        }
    }
}
