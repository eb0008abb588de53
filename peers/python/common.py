"""Shared pieces of the talk's Python servers: command line, listening socket, protocols.

Each server file (blocking.py, threads.py, processes.py, selectors_loop.py,
asyncio_server.py) follows one slide of the talk and only differs in how it runs
connections. They speak concur's protocols byte for byte (src/protocol/ in the Rust
tree; tests/conformance.rs runs one table of cases against both), so `concur load`
and `concur lab` compare like with like:

- echo: every recv() is answered prefix + data (b'Received: ' by default, the talk's).
- fib: a request is a decimal n ended by '\\n' ('\\r\\n' accepted) or '?', answered
  fib(n) and '\\n', in order; split and pipelined requests are fine. Blank requests
  (spaces and tabs) are skipped. Errors are one line and keep the connection:
  'ERR not a number: <first 32 bytes, escaped>' and 'ERR n out of range 0..=MAX'
  (MAX is --max-n, 42 by default). More than 64 bytes without a terminator gets
  'ERR request too long' and the connection closes; an unterminated request when
  the client shuts down its side gets 'ERR unterminated request at end of stream'.
"""

import argparse
import re
import signal
import socket
import sys
import time
from socket import AF_INET, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR

# concur's numbers (src/protocol/fib.rs, src/serve/mod.rs).
MAX_REQUEST_LEN = 64
DEFAULT_MAX_N = 42
QUOTE_LEN = 32
# How long a closing connection discards input while its FIN reaches the client:
# closing with unread input would send RST, which can destroy the last replies.
LINGER = 2.0

TERMINATOR = re.compile(b"[\n?]")


def fib(n):
    # The talk's function, as written.
    if n <= 2:
        return 1
    return fib(n - 1) + fib(n - 2)


def parse_args(model):
    p = argparse.ArgumentParser(description=f"the talk's {model} server")
    p.add_argument("--addr", default="127.0.0.1:25000")
    p.add_argument("--service", choices=["echo", "fib"], default="echo")
    p.add_argument("--prefix", default="Received: ")
    p.add_argument("--max-n", type=int, default=DEFAULT_MAX_N)
    args = p.parse_args()
    host, _, port = args.addr.rpartition(":")
    args.address = (host, int(port))
    args.model = model
    return args


def listen(args, backlog=1024):
    sock = socket.socket(AF_INET, SOCK_STREAM)
    sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
    sock.bind(args.address)
    sock.listen(backlog)
    return sock


def announce(args, sock):
    host, port = sock.getsockname()
    print(f"listening on {host}:{port} model={args.model} service={args.service}", flush=True)
    # SIGTERM exits at once, like Ctrl-C: the lab stops peers this way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def linger_close(client):
    """Send FIN after everything written, then discard what the client still sends
    until it closes or LINGER passes (a blocking socket)."""
    try:
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            client.settimeout(left)
            if not client.recv(4096):
                return
    except OSError:
        pass  # a reset or a timeout: the client is gone or too slow to say goodbye


def escape(data):
    """Rust's std::ascii::escape_default, byte by byte."""
    out = []
    for b in data:
        if b == 9:
            out.append(b"\\t")
        elif b == 10:
            out.append(b"\\n")
        elif b == 13:
            out.append(b"\\r")
        elif b in (34, 39, 92):  # " ' backslash
            out.append(b"\\" + bytes([b]))
        elif 32 <= b < 127:
            out.append(bytes([b]))
        else:
            out.append(b"\\x%02x" % b)
    return b"".join(out)


def trim(data):
    # Only spaces and tabs: a lone '\r' is not blank (concur's rule).
    return data.strip(b" \t")


class Protocol:
    """One connection's state: bytes in, bytes out, concur's rules exactly.

    After feed() or eof(), `closed` says the connection must close once the
    returned bytes are sent (a request too long); later input is ignored.
    """

    def __init__(self, args):
        self.service = args.service
        self.prefix = args.prefix.encode()
        self.max_n = args.max_n
        self.partial = b""
        self.closed = False

    def feed(self, data):
        if self.service == "echo":
            return self.prefix + data if data else b""
        if self.closed:
            return b""
        out = []
        pos = 0
        while True:
            m = TERMINATOR.search(data, pos)
            if m is None:
                break
            i = m.start()
            if len(self.partial) + (i - pos) > MAX_REQUEST_LEN:
                return self.too_long(out)
            request = self.partial + data[pos:i]
            self.partial = b""
            self.answer(request, data[i], out)
            pos = i + 1
        if len(self.partial) + (len(data) - pos) > MAX_REQUEST_LEN:
            return self.too_long(out)
        self.partial += data[pos:]
        return b"".join(out)

    def eof(self):
        """The client shut down its side: report an unterminated request."""
        out = b""
        if self.service == "fib" and not self.closed and trim(self.partial):
            out = b"ERR unterminated request at end of stream\n"
        self.partial = b""
        self.closed = True
        return out

    def too_long(self, out):
        out.append(b"ERR request too long\n")
        self.partial = b""
        self.closed = True
        return b"".join(out)

    def answer(self, raw, terminator, out):
        if terminator == 10 and raw.endswith(b"\r"):
            raw = raw[:-1]
        text = trim(raw)
        if not text:
            return
        if not text.isdigit():
            out.append(b"ERR not a number: " + escape(text[:QUOTE_LEN]) + b"\n")
            return
        n = int(text)
        if n > self.max_n:
            out.append(b"ERR n out of range 0..=%d\n" % self.max_n)
            return
        out.append(b"%d\n" % fib(n))
