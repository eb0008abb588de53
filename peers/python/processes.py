"""The talk's option 2: a new process for each client.

Unlike the slide, the parent closes its copy of the client socket (or the client never
sees EOF) and reaps finished children (or they stay zombies). It reaps them with
waitpid, not by ignoring SIGCHLD, so their CPU time is charged to this server.
"""

import os
import signal
from common import parse_args, listen, announce
from blocking import echo_handler


def reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def echo_server(args):
    sock = listen(args)
    announce(args, sock)
    signal.signal(signal.SIGCHLD, reap)
    while True:
        client, addr = sock.accept()
        pid = os.fork()
        if pid == 0:
            sock.close()
            try:
                echo_handler(client, addr, args)
            finally:
                os._exit(0)
        client.close()


if __name__ == "__main__":
    try:
        echo_server(parse_args("python-processes"))
    except KeyboardInterrupt:
        pass
