"""The talk's option 3 on asyncio: one task per client on an event loop."""

import asyncio
import socket
from common import parse_args, listen, announce, Protocol, LINGER


async def echo_server(args):
    loop = asyncio.get_running_loop()
    sock = listen(args)
    sock.setblocking(False)
    announce(args, sock)
    while True:
        client, addr = await loop.sock_accept(sock)
        loop.create_task(echo_handler(loop, client, args))


async def echo_handler(loop, client, args):
    proto = Protocol(args)
    with client:
        try:
            while True:
                data = await loop.sock_recv(client, 10000)
                if not data:
                    # The client shut down its side: send what is still owed.
                    await loop.sock_sendall(client, proto.eof())
                    break
                await loop.sock_sendall(client, proto.feed(data))
                if proto.closed:
                    await linger_close(loop, client)  # a request too long
                    break
        except ConnectionError:
            pass  # a reset peer ends this client only


async def linger_close(loop, client):
    """FIN after the replies, then discard input until EOF or LINGER passes."""
    deadline = loop.time() + LINGER
    try:
        client.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await asyncio.wait_for(loop.sock_recv(client, 4096), left):
                return
    except (asyncio.TimeoutError, OSError):
        pass  # too slow to say goodbye, or already gone


if __name__ == "__main__":
    try:
        asyncio.run(echo_server(parse_args("python-asyncio")))
    except KeyboardInterrupt:
        pass
