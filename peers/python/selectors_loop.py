"""The talk's option 3 with select: one thread, a readiness loop (selectors module).

Unlike the slide, a request split across recv() calls is kept and joined (the
Protocol object buffers the unterminated tail), and unsent output waits for
writability instead of being lost.
"""

import selectors
from common import parse_args, listen, announce, Protocol


def server_loop(args):
    sel = selectors.DefaultSelector()
    sock = listen(args)
    sock.setblocking(False)
    announce(args, sock)
    sel.register(sock, selectors.EVENT_READ, None)
    state = {}
    while True:
        for key, events in sel.select():
            s = key.fileobj
            if s is sock:
                client, _ = sock.accept()
                client.setblocking(False)
                state[client] = [Protocol(args), b""]
                sel.register(client, selectors.EVENT_READ, None)
                continue
            proto, pending = state[s]
            if events & selectors.EVENT_READ:
                try:
                    data = s.recv(10000)
                except (ConnectionError, BlockingIOError):
                    data = None
                if not data:
                    sel.unregister(s)
                    del state[s]
                    s.close()
                    continue
                try:
                    pending += proto.feed(data)
                except ValueError:
                    sel.unregister(s)
                    del state[s]
                    s.close()
                    continue
            if pending:
                try:
                    sent = s.send(pending)
                except BlockingIOError:
                    sent = 0
                except ConnectionError:
                    sel.unregister(s)
                    del state[s]
                    s.close()
                    continue
                pending = pending[sent:]
            state[s][1] = pending
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
            sel.modify(s, want, None)


if __name__ == "__main__":
    try:
        server_loop(parse_args("python-selectors"))
    except KeyboardInterrupt:
        pass
