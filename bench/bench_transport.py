"""How many Raft messages per second GrpcTransport moves between two nodes in one process.

One GrpcTransport streams APPEND messages (1 or 64 entries of 32 bytes each) to a
RaftPeerServicer on a grpc.aio server; the sender hands them out 64 at a time, as a
leader's Ready would, and keeps at most `--window` messages in flight so that nothing
is dropped.  Next to it, the floor: a bare grpc.aio unary echo server's requests/s,
measured in the same run (bench/floors.py).  The ratio says how many Raft messages the
transport moves in the time gRPC serves one unary request.

    .venv/bin/python -m bench.bench_transport [--seconds 1] [--window 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc.aio
import uvloop

from bench.floors import grpc_echo_floor
from server.raft.types import Entry, Message, MsgType
from server.transport.grpc_transport import GrpcTransport
from server.transport.peer_service import RaftPeerServicer, add_raft_service
from server.transport.wire import SERVER_OPTIONS

ENTRIES_PER_MESSAGE = (1, 64)
MESSAGES_PER_SEND = 64  # one Ready's worth for one peer
PAYLOAD = b"x" * 32


def _appends(entries: int) -> list[Message]:
    return [
        Message(
            MsgType.APPEND,
            "a",
            "b",
            term=1,
            index=i * entries,
            log_term=1,
            entries=[Entry(1, i * entries + k + 1, PAYLOAD) for k in range(entries)],
            commit=i * entries,
        )
        for i in range(MESSAGES_PER_SEND)
    ]


class _Counter:
    """The receiving node's inbox: counts arrivals and wakes the sender when the window opens."""

    def __init__(self, window: int) -> None:
        self.received = 0
        self.sent = 0
        self._window = window
        self.room = asyncio.Event()

    def __call__(self, batch: list[Message]) -> None:
        self.received += len(batch)
        if self.sent - self.received <= self._window // 2:
            self.room.set()


async def transport_rate(entries: int, seconds: float, window: int) -> tuple[float, float, int]:
    """(messages/s, messages per gRPC write, messages dropped) for one message shape."""
    counter = _Counter(window)
    servicer = RaftPeerServicer(counter, "b")
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_raft_service(server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    transport = GrpcTransport("a", {"b": f"127.0.0.1:{port}"})
    chunk = _appends(entries)
    try:
        transport.send(chunk)  # warm up: connect, and let gRPC size its buffers
        counter.sent = len(chunk)
        while counter.received < counter.sent:
            await asyncio.sleep(0.001)
        first_received, first_batches = counter.received, servicer.stats.batches
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if counter.sent - counter.received >= window:
                counter.room.clear()
                await counter.room.wait()
            transport.send(chunk)
            counter.sent += len(chunk)
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
        moved = counter.received - first_received
        writes = servicer.stats.batches - first_batches
        return moved / elapsed, moved / max(writes, 1), transport.peer_stats()["b"].dropped
    finally:
        await transport.close()
        await server.stop(None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each measurement")
    parser.add_argument("--window", type=int, default=4096, help="most messages in flight at once")
    args = parser.parse_args()

    floor = await grpc_echo_floor(seconds=args.seconds)
    print(f"{'grpc.aio unary echo floor':<30} {floor:>10,.0f} requests/s")
    for entries in ENTRIES_PER_MESSAGE:
        rate, per_write, dropped = await transport_rate(entries, args.seconds, args.window)
        label = f"GrpcTransport APPEND x{entries}"
        print(
            f"{label:<30} {rate:>10,.0f} messages/s  {rate * entries:>11,.0f} entries/s"
            f"  {rate / floor:6.2f} x floor  {per_write:6.1f} messages/write  {dropped} dropped"
        )


if __name__ == "__main__":
    uvloop.run(main())
