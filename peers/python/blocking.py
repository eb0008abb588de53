"""The talk's first server: one thread, one client at a time."""

from common import parse_args, listen, announce, Protocol


def echo_server(args):
    sock = listen(args)
    announce(args, sock)
    while True:
        client, addr = sock.accept()
        echo_handler(client, addr, args)


def echo_handler(client, addr, args):
    proto = Protocol(args)
    with client:
        try:
            while True:
                data = client.recv(10000)
                if not data:
                    break
                client.sendall(proto.feed(data))
        except (ConnectionError, ValueError):
            pass  # a reset peer or a request too long ends this client only


if __name__ == "__main__":
    try:
        echo_server(parse_args("python-blocking"))
    except KeyboardInterrupt:
        pass
