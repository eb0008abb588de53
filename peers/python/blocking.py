"""The talk's first server: one thread, one client at a time."""

from common import parse_args, listen, announce, linger_close, Protocol


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
                    # The client shut down its side: send what is still owed.
                    client.sendall(proto.eof())
                    break
                client.sendall(proto.feed(data))
                if proto.closed:
                    linger_close(client)  # a request too long ends this client
                    break
        except ConnectionError:
            pass  # a reset peer ends this client only


if __name__ == "__main__":
    try:
        echo_server(parse_args("python-blocking"))
    except KeyboardInterrupt:
        pass
