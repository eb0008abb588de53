"""The talk's option 3 with select: one thread, a readiness loop (selectors module).

Unlike the slide, a request split across recv() calls is kept and joined (the
Protocol object buffers the unterminated tail), unsent output waits for writability
instead of being lost, and a connection closes only once its replies are sent: after
the client shut down its side, or with a FIN and a short linger after a request too
long (closing on unread input would reset the connection and lose the replies).
"""

import selectors
import socket
import time
from common import parse_args, listen, announce, Protocol, LINGER

READING, FINISHING, LINGERING = "reading", "finishing", "lingering"


class Conn:
    def __init__(self, sock, args):
        self.sock = sock
        self.proto = Protocol(args)
        self.pending = b""
        # reading; finishing: send what is owed, then close (client done) or linger
        # (request too long); lingering: FIN sent, discarding input until deadline.
        self.state = READING
        self.linger_after = False
        self.deadline = None


def server_loop(args):
    sel = selectors.DefaultSelector()
    sock = listen(args)
    sock.setblocking(False)
    announce(args, sock)
    sel.register(sock, selectors.EVENT_READ, None)
    lingering = {}

    def close(c):
        sel.unregister(c.sock)
        lingering.pop(c.sock, None)
        c.sock.close()

    while True:
        timeout = None
        if lingering:
            timeout = max(0.0, min(c.deadline for c in lingering.values()) - time.monotonic())
        for key, events in sel.select(timeout):
            if key.data is None:
                client, _ = sock.accept()
                client.setblocking(False)
                sel.register(client, selectors.EVENT_READ, Conn(client, args))
                continue
            c = key.data
            if events & selectors.EVENT_READ and c.state != FINISHING:
                try:
                    data = c.sock.recv(10000)
                except BlockingIOError:
                    data = None
                except ConnectionError:
                    close(c)
                    continue
                if c.state == LINGERING:
                    if data == b"":
                        close(c)
                    continue
                if data == b"":
                    # The client shut down its side: send what is owed, then close.
                    c.pending += c.proto.eof()
                    c.state = FINISHING
                elif data:
                    c.pending += c.proto.feed(data)
                    if c.proto.closed:
                        c.state = FINISHING
                        c.linger_after = True
            if c.pending:
                try:
                    sent = c.sock.send(c.pending)
                except BlockingIOError:
                    sent = 0
                except ConnectionError:
                    close(c)
                    continue
                c.pending = c.pending[sent:]
            if c.state == FINISHING and not c.pending:
                if not c.linger_after:
                    close(c)
                    continue
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    close(c)
                    continue
                c.state = LINGERING
                c.deadline = time.monotonic() + LINGER
                lingering[c.sock] = c
            want = selectors.EVENT_WRITE if c.pending else 0
            if c.state != FINISHING:
                want |= selectors.EVENT_READ
            sel.modify(c.sock, want, c)
        now = time.monotonic()
        for c in [c for c in lingering.values() if c.deadline <= now]:
            close(c)


if __name__ == "__main__":
    try:
        server_loop(parse_args("python-selectors"))
    except KeyboardInterrupt:
        pass
