"""A TCP proxy that delays what it forwards, both ways, by the milliseconds in a
file it reads again every 50 ms (tests/netns.py Lab.delay writes it): this kernel
has no netem qdisc, so the partition bench adds latency here, in front of a
service that advertises the proxy's address instead of its own.

    python delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_FILE
"""

import asyncio
import sys
from pathlib import Path

CHUNK = 65536
QUEUED_CHUNKS = 256  # per direction of a connection: back-pressure beyond that
POLL_S = 0.05


class Delay:
    def __init__(self, path: Path):
        self.path, self.seconds = path, 0.0

    async def follow(self) -> None:
        while True:
            try:
                self.seconds = float(self.path.read_text() or 0) / 1000
            except (OSError, ValueError):
                self.seconds = 0.0
            await asyncio.sleep(POLL_S)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Forwards reader to writer, each chunk once it is delay.seconds old, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(QUEUED_CHUNKS)

    async def send() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            await queue.put((loop.time() + delay.seconds, data))
        await queue.put(None)
        await sender
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        sender.cancel()
        writer.close()


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int, delay_file: str) -> None:
    delay = Delay(Path(delay_file))
    following = asyncio.create_task(delay.follow())

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, target_writer, delay), pump(target_reader, writer, delay))

    server = await asyncio.start_server(connection, listen_host, listen_port)
    print("ready", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        following.cancel()


if __name__ == "__main__":
    host, port, target_host, target_port, delay_file = sys.argv[1:6]
    asyncio.run(main(host, int(port), target_host, int(target_port), delay_file))
