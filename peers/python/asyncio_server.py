"""The talk's option 3 on asyncio: one task per client on an event loop."""

import asyncio
from common import parse_args, listen, announce, Protocol


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
        while True:
            try:
                data = await loop.sock_recv(client, 10000)
            except ConnectionError:
                break
            if not data:
                break
            try:
                await loop.sock_sendall(client, proto.feed(data))
            except (ConnectionError, ValueError):
                break


if __name__ == "__main__":
    try:
        asyncio.run(echo_server(parse_args("python-asyncio")))
    except KeyboardInterrupt:
        pass
