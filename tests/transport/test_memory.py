"""MemoryNetwork: asynchronous, batched, never duplicated delivery, and faults on demand."""

from __future__ import annotations

import asyncio

import pytest

from server.raft.types import Message, NodeId
from server.transport.memory import MemoryNetwork
from server.transport.protocols import Transport
from tests.transport.peers import append, wait_until


class Node:
    """A node's inbox: what arrived, batch by batch."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId) -> None:
        self.batches: list[list[Message]] = []
        self.transport: Transport = network.transport(node_id)
        network.attach(node_id, self.batches.append)

    @property
    def received(self) -> list[Message]:
        return [m for batch in self.batches for m in batch]


def cluster(*ids: NodeId, seed: int = 0) -> tuple[MemoryNetwork, dict[NodeId, Node]]:
    network = MemoryNetwork(seed)
    return network, {node_id: Node(network, node_id) for node_id in ids}


async def settle() -> None:
    """Lets every delivery scheduled with call_soon run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_delivery_is_asynchronous_batched_per_peer_and_copied() -> None:
    network, nodes = cluster("a", "b", "c")
    to_b = [append(0, dst="b"), append(1, dst="b")]
    nodes["a"].transport.send([to_b[0], append(0, dst="c"), to_b[1]])
    assert nodes["b"].batches == [], "delivered inside send"

    await settle()
    assert nodes["b"].batches == [to_b]
    assert nodes["c"].received == [append(0, dst="c")]
    assert nodes["b"].received[0] is not to_b[0]
    assert nodes["b"].received[0].entries is not to_b[0].entries
    assert network.delivered == 3 and network.dropped == 0


async def test_a_partition_cuts_links_between_groups_until_healed() -> None:
    network, nodes = cluster("a", "b", "c", "d")
    network.partition({"a", "b"})  # c and d, named nowhere, form the other side
    for src in "abcd":
        nodes[src].transport.send([append(0, src=src, dst=dst) for dst in "abcd" if dst != src])
    await settle()
    assert {m.src for m in nodes["a"].received} == {"b"}
    assert {m.src for m in nodes["c"].received} == {"d"}

    network.heal()
    nodes["a"].transport.send([append(1, dst="c")])
    await settle()
    assert [m.index for m in nodes["c"].received if m.src == "a"] == [1]


async def test_isolate_cuts_one_node_from_all_others() -> None:
    network, nodes = cluster("a", "b", "c")
    network.isolate("a")
    nodes["a"].transport.send([append(0, dst="b")])
    nodes["c"].transport.send([append(0, src="c", dst="a"), append(0, src="c", dst="b")])
    await settle()
    assert nodes["a"].received == []
    assert [m.src for m in nodes["b"].received] == ["c"]
    assert network.dropped == 2


async def test_a_partition_also_cuts_messages_already_in_flight() -> None:
    network, nodes = cluster("a", "b")
    network.set_delay(0.02, 0.02)
    nodes["a"].transport.send([append(0)])
    network.partition({"a"}, {"b"})
    await asyncio.sleep(0.05)
    assert nodes["b"].received == [] and network.dropped == 1


async def test_drops_follow_the_seed_and_never_duplicate() -> None:
    async def run_and_settle(seed: int) -> list[int]:
        network, nodes = cluster("a", "b")
        network.set_drop(0.5, seed)
        nodes["a"].transport.send([append(i) for i in range(1000)])
        await settle()
        assert network.delivered + network.dropped == 1000
        return [m.index for m in nodes["b"].received]

    first, again, other = await run_and_settle(1), await run_and_settle(1), await run_and_settle(2)
    assert first == again != other
    assert 400 < len(first) < 600
    assert first == sorted(set(first))


async def test_delays_postpone_delivery_within_the_bounds() -> None:
    network, nodes = cluster("a", "b")
    network.set_delay(0.05, 0.1)
    loop = asyncio.get_running_loop()
    arrived: list[float] = []
    network.attach("b", lambda batch: arrived.append(loop.time()))
    start = loop.time()
    for i in range(5):
        nodes["a"].transport.send([append(i)])

    await wait_until(lambda: len(arrived) == 5, timeout=1.0)
    assert all(0.05 <= t - start <= 0.1 + 0.05 for t in arrived)


async def test_detached_nodes_and_closed_transports_lose_messages() -> None:
    network, nodes = cluster("a", "b")
    network.detach("b")
    nodes["a"].transport.send([append(0)])
    await settle()
    await nodes["a"].transport.close()
    nodes["a"].transport.send([append(1)])
    await settle()
    assert nodes["b"].received == [] and network.dropped == 2


def test_bad_fault_settings_are_refused() -> None:
    network = MemoryNetwork()
    with pytest.raises(ValueError, match="drop probability"):
        network.set_drop(1.5)
    with pytest.raises(ValueError, match="lo <= hi"):
        network.set_delay(0.2, 0.1)
    with pytest.raises(ValueError, match="more than one partition group"):
        network.partition({"a"}, {"a", "b"})
