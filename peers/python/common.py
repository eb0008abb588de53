"""Shared pieces of the talk's Python servers: command line, listening socket, protocols.

Each server file (blocking.py, threads.py, processes.py, selectors_loop.py,
asyncio_server.py) follows one slide of the talk and only differs in how it runs
connections. They speak concur's protocols, so `concur load` measures them with the
same client as the Rust models:

- echo: every recv() is answered b'Received: ' + data (the talk's server).
- fib: requests are decimal n ended by '\\n' or '?', each answered fib(n) and '\\n'.
"""

import argparse
import signal
import sys
from socket import socket, AF_INET, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR


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
    p.add_argument("--max-n", type=int, default=32)
    args = p.parse_args()
    host, _, port = args.addr.rpartition(":")
    args.address = (host, int(port))
    args.model = model
    return args


def listen(args, backlog=1024):
    sock = socket(AF_INET, SOCK_STREAM)
    sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
    sock.bind(args.address)
    sock.listen(backlog)
    return sock


def announce(args, sock):
    host, port = sock.getsockname()
    print(f"listening on {host}:{port} model={args.model} service={args.service}", flush=True)
    # SIGTERM exits at once, like Ctrl-C: the lab stops peers this way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


class Protocol:
    """One connection's state: bytes in, bytes out (the same rules as concur's)."""

    def __init__(self, args):
        self.service = args.service
        self.prefix = args.prefix.encode()
        self.max_n = args.max_n
        self.partial = b""

    def feed(self, data):
        if self.service == "echo":
            return self.prefix + data
        out = []
        buf = self.partial + data
        start = 0
        for i, b in enumerate(buf):
            if b in (10, 63):  # '\n' or '?'
                out.append(self.answer(buf[start:i]))
                start = i + 1
        self.partial = buf[start:]
        if len(self.partial) > 64:
            raise ValueError("request too long")
        return b"".join(out)

    def answer(self, req):
        text = req.strip(b" \t\r")
        if not text:
            return b""
        if not text.isdigit():
            return b"ERR not a number\n"
        n = int(text)
        if n > self.max_n:
            return b"ERR n out of range 0..=%d\n" % self.max_n
        return b"%d\n" % fib(n)
