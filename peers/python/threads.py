"""The talk's option 1: a new thread for each client."""

from threading import Thread
from common import parse_args, listen, announce
from blocking import echo_handler


def echo_server(args):
    sock = listen(args)
    announce(args, sock)
    while True:
        client, addr = sock.accept()
        Thread(target=echo_handler, args=(client, addr, args), daemon=True).start()


if __name__ == "__main__":
    try:
        echo_server(parse_args("python-threads"))
    except KeyboardInterrupt:
        pass
