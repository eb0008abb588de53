//! The talk's echo service: every chunk read is answered with `prefix + chunk`.
//!
//! The prefix appears once per *server-side read*, exactly as in the talk's
//! `client.sendall(b'Received: ' + data)`: a client that sends `hello` may get
//! `Received: hello` or, if the kernel splits it, `Received: helReceived: lo`.
//! TCP is a byte stream and has no messages; the talk's server shows that, and so
//! does this one. An empty prefix gives plain RFC 862 echo, where the reply stream
//! equals the request stream whatever the chunking.

use super::{Flow, Sink};

/// The prefix the talk's server puts before every chunk it echoes.
pub const DEFAULT_PREFIX: &str = "Received: ";

/// Per-connection echo state (only the prefix: echo remembers nothing).
#[derive(Debug, Clone)]
pub struct Echo {
    prefix: Vec<u8>,
}

impl Echo {
    pub fn new(prefix: Vec<u8>) -> Self {
        Echo { prefix }
    }

    /// Answer one read: `prefix + input`. Echo never asks to close, and echoes
    /// nothing (pausing with all of `input` left) while the sink is full; the input
    /// held meanwhile is echoed as one chunk, with one prefix, on resume.
    pub fn parse(&mut self, input: &[u8], sink: &mut impl Sink) -> (usize, Flow) {
        if input.is_empty() {
            return (0, Flow::Continue);
        }
        if sink.full() {
            return (0, Flow::Paused);
        }
        if !self.prefix.is_empty() {
            sink.bytes(&self.prefix);
        }
        sink.bytes(input);
        (input.len(), Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        Flow, ServiceSpec,
        testutil::{Bounded, run_bounded, run_chunks, split},
    };
    use proptest::prelude::*;

    fn talk() -> ServiceSpec {
        ServiceSpec::Echo {
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_like_the_talk() {
        let (out, closed) = run_chunks(talk().session(), &[b"hello\n"]);
        assert_eq!(out, b"Received: hello\n");
        assert!(!closed);
    }

    #[test]
    fn prefix_once_per_read() {
        let (out, _) = run_chunks(talk().session(), &[b"hel", b"lo"]);
        assert_eq!(out, b"Received: helReceived: lo");
    }

    #[test]
    fn empty_read_gets_nothing() {
        let (out, _) = run_chunks(talk().session(), &[b""]);
        assert!(out.is_empty());
    }

    #[test]
    fn empty_prefix_is_rfc862() {
        let spec = ServiceSpec::Echo { prefix: Vec::new() };
        let (out, _) = run_chunks(spec.session(), &[b"a", b"\0\xffb"]);
        assert_eq!(out, b"a\0\xffb");
    }

    proptest! {
        #[test]
        fn any_chunking_is_prefix_plus_chunk(data in proptest::collection::vec(any::<u8>(), 0..512),
                                             cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            let chunks = split(&data, &cuts);
            let (out, _) = run_chunks(talk().session(), &chunks);
            let mut expected = Vec::new();
            for c in &chunks {
                expected.extend_from_slice(b"Received: ");
                expected.extend_from_slice(c);
            }
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn any_chunking_plain_echo_is_identity(data in proptest::collection::vec(any::<u8>(), 0..512),
                                               cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            let spec = ServiceSpec::Echo { prefix: Vec::new() };
            let (out, _) = run_chunks(spec.session(), &split(&data, &cuts));
            prop_assert_eq!(out, data);
        }

        /// Echo makes no jobs, so a sink with room never pauses it; a sink with
        /// room for none holds every read until it has room, then echoes them as one
        /// chunk. Plain echo stays the identity either way.
        #[test]
        fn bounded_sinks_keep_plain_echo_the_identity(data in proptest::collection::vec(any::<u8>(), 0..512),
                                                      cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            let spec = ServiceSpec::Echo { prefix: Vec::new() };
            let chunks = split(&data, &cuts);
            let (out, closed, _) = run_bounded(spec.session(), &chunks, 1, &[]);
            prop_assert!(!closed);
            prop_assert_eq!(&out, &data);

            let mut session = spec.session();
            let mut full = Bounded::new(0);
            for c in &chunks {
                prop_assert_eq!(session.feed(c, &mut full), Flow::Paused);
            }
            prop_assert!(full.out.is_empty());
            full.cap = 1;
            prop_assert_eq!(session.resume(&mut full), Flow::Continue);
            prop_assert_eq!(full.out, data);
        }
    }
}
