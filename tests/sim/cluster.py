"""A deterministic simulator for the pure Raft core.

Several cores run in one process on a simulated clock.  The network drops, delays,
duplicates and reorders messages and can partition any subset; nodes crash and
restart from exactly what their core asked to persist (scenario tests may `rewind` a
crashed node's disk, as a machine crash does to storage short of fsync on every write).
Everything random comes from one seeded generator, so a seed replays exactly.

Every Ready is checked as it is carried out:
- election safety: at most one leader per term;
- log matching: equal (index, term) on two nodes means equal prefixes (hash chains);
- leader completeness: a new leader holds every entry committed so far;
- state machine safety: no two nodes apply different entries at one index;
- durability: a node's commit index never goes back, even across restarts (unless rewound);
- the log's bounds: start <= snapshot <= applied <= commit <= last index;
- proposals: an acknowledged one is applied at its index, a definitely failed one never is;
- reads: a ReadIndex answer covers everything committed before the read was asked.
"""

from __future__ import annotations

import copy
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from server.raft import (
    DEFINITE_FAILURES,
    Config,
    Entry,
    HardState,
    Message,
    MsgType,
    RaftCore,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

TICK = 10  # time units per tick; message delays are drawn in units, so they straddle ticks
_NEVER_DUPLICATED = frozenset({MsgType.PROPOSE, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER})


class Violation(AssertionError):
    """A Raft safety or liveness property failed."""


def _link(prev: int, entry: Entry) -> int:
    return hash((prev, entry.term, entry.kind, entry.data))


@dataclass
class Disk:
    """Exactly what the core handed out to persist, plus a hash chain over the log."""

    hard: HardState
    snapshot: Snapshot
    entries: list[Entry] = field(default_factory=list)
    chain: list[int] = field(default_factory=list)
    # The log starts after `start` (at or before the snapshot), whose chain link is `start_chain`.
    start: SnapshotMeta = field(default_factory=SnapshotMeta)
    start_chain: int = 0

    def base_chain(self) -> int:
        return int(self.snapshot.data.split(b"|")[1]) if self.snapshot.data else 0

    def take(self, snapshot: Snapshot, start: SnapshotMeta) -> None:
        """Store `snapshot` and drop the entries up to `start`: a compaction, or (with
        start at the snapshot and no entry there) a snapshot replacing the whole log."""
        self.snapshot = snapshot
        drop = start.index - self.start.index
        if drop <= 0:
            return
        if drop <= len(self.entries) and self.entries[drop - 1].term == start.term:
            self.start_chain = self.chain[drop - 1]
            del self.entries[:drop]
            del self.chain[:drop]
        else:
            assert start == snapshot.meta, "only a snapshot replaces the whole log"
            self.start_chain = self.base_chain()
            self.entries, self.chain = [], []
        self.start = start


@dataclass
class SimNode:
    id: str
    disk: Disk
    core: RaftCore | None = None
    applied: int = 0
    applied_chain: int = 0
    proposals: dict[int, bytes] = field(default_factory=dict)  # pid -> payload, until its outcome
    reads: dict[bytes, int] = field(default_factory=dict)  # context -> commit floor when asked
    boots: int = 0  # its incarnation: a restarted core answers as a new one


@dataclass
class NetParams:
    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 1
    max_delay: int = 5


class Simulation:
    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        *,
        election_ticks: int = 10,
        max_entries_per_msg: int = 8,
        max_inflight_msgs: int = 4,
        max_inflight_bytes: int = 8 << 20,
        pre_vote: bool = True,
        check_quorum: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.config = {
            nid: Config(
                node_id=nid,
                voters=tuple(self.ids),
                election_ticks=election_ticks,
                max_entries_per_msg=max_entries_per_msg,
                max_inflight_msgs=max_inflight_msgs,
                max_inflight_bytes=max_inflight_bytes,
                max_bytes_per_msg=256,
                pre_vote=pre_vote,
                check_quorum=check_quorum,
            )
            for nid in self.ids
        }
        self.net = NetParams()
        # The chance that a node crashes after sending a `send_first` Ready's messages but
        # before saving anything of it: the window the leader's early send opens.
        self.torn = 0.0
        # Scenario tests see every message sent through this, and may drop (None) or alter it.
        self.intercept: Callable[[Message], Message | None] = lambda msg: msg
        self.now = 0
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.group: dict[str, int] = {nid: 0 for nid in self.ids}
        self.nodes: dict[str, SimNode] = {}
        for nid in self.ids:
            empty = Snapshot(SnapshotMeta(0, 0, tuple(self.ids)))
            self.nodes[nid] = SimNode(nid, Disk(HardState(), empty))
            self.start(nid)
        # Global knowledge the checkers compare against.
        self.leaders: dict[int, str] = {}
        self.chain: dict[tuple[int, int], int] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.applied_payloads: dict[bytes, int] = {}
        self.max_committed = 0
        self.failed: set[bytes] = set()
        self.acked: dict[bytes, int] = {}
        self.read_answers = 0
        self._payloads = 0
        self._reads = 0
        self.trace: deque[str] = deque(maxlen=60)

    # ------------------------------------------------------------------ control

    def start(self, nid: str) -> None:
        """Boot (or reboot) a node from its disk, as the real driver would."""
        node = self.nodes[nid]
        disk = node.disk
        core_rng = random.Random(self.rng.getrandbits(64))
        node.boots += 1
        config = replace(self.config[nid], incarnation=node.boots)
        node.core = RaftCore(config, core_rng, disk.hard, disk.snapshot, disk.entries, disk.start)
        node.applied = disk.snapshot.meta.index
        node.applied_chain = disk.base_chain()
        node.proposals.clear()
        node.reads.clear()

    def crash(self, nid: str) -> None:
        self.nodes[nid].core = None
        self.nodes[nid].proposals.clear()
        self.nodes[nid].reads.clear()
        self._log(f"crash {nid}")

    def disk_image(self, nid: str) -> Disk:
        """A copy of what `nid` has saved so far, for `rewind`."""
        return copy.deepcopy(self.nodes[nid].disk)

    def rewind(self, nid: str, image: Disk) -> None:
        """What a machine crash may do to a crashed node whose storage does not fsync every
        write: everything it saved since `image` was taken is gone."""
        assert self.nodes[nid].core is None, "only a crashed node loses what it saved"
        self.nodes[nid].disk = copy.deepcopy(image)
        self._log(f"{nid} lost what it saved after its commit {image.hard.commit}")

    def up(self) -> list[str]:
        return [nid for nid in self.ids if self.nodes[nid].core is not None]

    def down(self) -> list[str]:
        return [nid for nid in self.ids if self.nodes[nid].core is None]

    def partition(self, *groups: list[str]) -> None:
        """Split the network; nodes not named are isolated on their own."""
        for n, nid in enumerate(self.ids):
            self.group[nid] = 1000 + n
        for g, members in enumerate(groups):
            for nid in members:
                self.group[nid] = g
        self._log(f"partition {groups}")

    def heal(self) -> None:
        for nid in self.ids:
            self.group[nid] = 0
        self._log("heal")

    def propose(self, nid: str, size: int = 0) -> bytes:
        """Propose a fresh payload at `nid`, padded to `size` bytes."""
        node = self.nodes[nid]
        assert node.core is not None
        self._payloads += 1
        payload = f"p{self._payloads}".encode().ljust(size, b".")
        node.proposals[node.core.propose(payload)] = payload
        self._process(node)
        return payload

    def read(self, nid: str) -> bytes:
        node = self.nodes[nid]
        assert node.core is not None
        self._reads += 1
        context = f"r{self._reads}".encode()
        node.reads[context] = self.max_committed
        node.core.read_index(context)
        self._process(node)
        return context

    def transfer(self, nid: str, target: str) -> None:
        core = self.nodes[nid].core
        assert core is not None
        core.transfer_leader(target)
        self._process(self.nodes[nid])

    def compact(self, nid: str, retain: int = 0) -> None:
        """Snapshot `nid` at its applied index, keeping the last `retain` entries it covers."""
        node = self.nodes[nid]
        assert node.core is not None
        log = node.core.log
        if node.applied > log.snapshot.meta.index:
            node.core.compact(node.applied, self._snapshot_data(node), retain)
            node.disk.take(log.snapshot, log.start)

    def run_ticks(self, ticks: int) -> None:
        self.run_until(self.now + ticks * TICK)

    def run_until(self, deadline: int) -> None:
        while True:
            next_tick = (self.now // TICK + 1) * TICK
            next_msg = self._queue[0][0] if self._queue else None
            if next_msg is not None and next_msg <= next_tick and next_msg <= deadline:
                self.now, _, msg = heapq.heappop(self._queue)
                self._deliver(msg)
            elif next_tick <= deadline:
                self.now = next_tick
                for nid in self.ids:
                    node = self.nodes[nid]
                    if node.core is not None:
                        node.core.tick()
                        self._process(node)
            else:
                self.now = deadline
                return

    def wait_for(self, condition: Callable[[], bool], max_ticks: int, what: str) -> None:
        """Run tick by tick until `condition` holds; a bounded wait, never a fixed sleep."""
        for _ in range(max_ticks):
            if condition():
                return
            self.run_ticks(1)
        if not condition():
            raise self.fail(f"timed out after {max_ticks} ticks waiting for {what}")

    def wait_for_leader(self, among: list[str] | None = None, max_ticks: int = 200) -> str:
        def elected() -> bool:
            lead = self.leader()
            return lead is not None and (among is None or lead in among)

        self.wait_for(elected, max_ticks, f"a leader among {among or self.ids}")
        lead = self.leader()
        assert lead is not None
        return lead

    def leader(self) -> str | None:
        """The leader of the highest term among live nodes, if one is in office."""
        best: tuple[int, str] | None = None
        for nid in self.up():
            core = self.nodes[nid].core
            assert core is not None
            if core.role is Role.LEADER and (best is None or core.term > best[0]):
                best = (core.term, nid)
        return best[1] if best else None

    def core(self, nid: str) -> RaftCore:
        core = self.nodes[nid].core
        assert core is not None, f"{nid} is down"
        return core

    def pending(self) -> int:
        return sum(len(n.proposals) + len(n.reads) for n in self.nodes.values())

    def stable(self) -> bool:
        """One leader known by every node, nothing pending, everything applied everywhere."""
        lead = self.leader()
        if lead is None or self.down() or self.pending():
            return False
        target = self.core(lead).log.committed
        if self.core(lead).log.last_index != target:
            return False
        return all(
            self.core(nid).leader == lead and self.nodes[nid].applied == target for nid in self.ids
        )

    def fail(self, what: str) -> Violation:
        history = "\n  ".join(self.trace)
        return Violation(
            f"{what}\n  seed={self.seed} nodes={len(self.ids)} t={self.now // TICK}"
            f" (replay: SIM_SEED={self.seed} pytest tests/sim)\n  last events:\n  {history}"
        )

    # ------------------------------------------------------------------ internals

    def _log(self, event: str) -> None:
        self.trace.append(f"t={self.now / TICK:.1f} {event}")

    def _snapshot_data(self, node: SimNode) -> bytes:
        return f"{node.applied}|{node.applied_chain}".encode()

    def _connected(self, a: str, b: str) -> bool:
        return self.group[a] == self.group[b]

    def _send(self, msg: Message) -> None:
        if not self._connected(msg.src, msg.dst):
            return
        msg = self.intercept(msg)  # type: ignore[assignment]
        if msg is None:
            return
        if self.net.drop and self.rng.random() < self.net.drop:
            return
        copies = 1
        if msg.type not in _NEVER_DUPLICATED and self.rng.random() < self.net.duplicate:
            copies = 2
        for _ in range(copies):
            self._seq += 1
            delay = self.rng.randint(self.net.min_delay, self.net.max_delay)
            heapq.heappush(self._queue, (self.now + delay, self._seq, msg))

    def _deliver(self, msg: Message) -> None:
        node = self.nodes[msg.dst]
        if node.core is None or not self._connected(msg.src, msg.dst):
            return
        node.core.step(msg)
        self._process(node)

    def _process(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        while core.has_ready():
            rd = core.ready()
            if rd.send_first:
                for msg in rd.messages:
                    self._send(msg)
                if self.torn and (rd.entries or rd.hard_state) and self.rng.random() < self.torn:
                    self.crash(node.id)
                    self._log(f"{node.id} crashed after sending, before saving")
                    return
            self._carry_out(node, core, rd)
            core.advance(rd)
            log = core.log
            if not log.start.index <= log.snapshot.meta.index <= log.applied <= log.committed <= log.last_index:
                raise self.fail(
                    f"{node.id} log bounds: start {log.start.index}, snapshot {log.snapshot.meta.index}, "
                    f"applied {log.applied}, commit {log.committed}, last {log.last_index}"
                )

    def _carry_out(self, node: SimNode, core: RaftCore, rd: Ready) -> None:
        disk = node.disk
        if rd.soft_state is not None:
            self._log(f"{node.id} {rd.soft_state.role.name} term={rd.soft_state.term}")
            if rd.soft_state.role is Role.LEADER:
                self._check_new_leader(node.id, core)
        if rd.snapshot is not None:
            disk.take(rd.snapshot, rd.snapshot.meta)
        if rd.hard_state is not None:
            if rd.hard_state.commit < disk.hard.commit:
                raise self.fail(f"{node.id} commit went back {disk.hard.commit}->{rd.hard_state.commit}")
            if rd.hard_state.term < disk.hard.term:
                raise self.fail(f"{node.id} term went back")
            disk.hard = rd.hard_state
        if rd.entries:
            self._persist_entries(node.id, disk, rd.entries)
        if not rd.send_first:
            for msg in rd.messages:
                self._send(msg)
        if rd.snapshot is not None:
            node.applied = rd.snapshot.meta.index
            node.applied_chain = disk.base_chain()
        for entry in rd.committed:
            self._apply(node, entry)
        for outcome in rd.outcomes:
            payload = node.proposals.pop(outcome.proposal_id, None)
            if payload is None:
                raise self.fail(f"{node.id} outcome for unknown proposal {outcome.proposal_id}")
            if outcome.reason is None:
                if self.applied.get(outcome.index, (0, b""))[1] != payload:
                    raise self.fail(f"{payload!r} acknowledged at {outcome.index} but not applied there")
                self.acked[payload] = outcome.index
            elif outcome.reason in DEFINITE_FAILURES:
                if payload in self.applied_payloads:
                    raise self.fail(f"{payload!r} failed ({outcome.reason.name}) but was applied")
                self.failed.add(payload)
        for state in rd.read_states:
            floor = node.reads.pop(state.context, None)
            if floor is None:
                raise self.fail(f"{node.id} answered unknown read {state.context!r}")
            if state.reason is None:
                if state.index < floor:
                    raise self.fail(
                        f"stale read on {node.id}: read index {state.index} < commit {floor} "
                        "when the read was asked"
                    )
                self.read_answers += 1

    def _persist_entries(self, nid: str, disk: Disk, entries: list[Entry]) -> None:
        base = disk.start.index
        start = entries[0].index - base - 1
        if start < 0 or start > len(disk.entries):
            raise self.fail(f"{nid} asked to persist {entries[0].index} after a gap")
        del disk.entries[start:]
        del disk.chain[start:]
        prev = disk.chain[-1] if disk.chain else disk.start_chain
        for entry in entries:
            prev = _link(prev, entry)
            disk.entries.append(entry)
            disk.chain.append(prev)
            key = (entry.index, entry.term)
            seen = self.chain.setdefault(key, prev)
            if seen != prev:
                raise self.fail(f"log matching broken at index {entry.index} term {entry.term} on {nid}")

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied + 1:
            raise self.fail(f"{node.id} applied {entry.index} after {node.applied}")
        known = self.applied.get(entry.index)
        if known is None:
            if entry.data in self.failed:
                raise self.fail(f"{entry.data!r} applied after it was reported failed")
            self.applied[entry.index] = (entry.term, entry.data)
            if entry.data:
                self.applied_payloads[entry.data] = entry.index
        elif known != (entry.term, entry.data):
            raise self.fail(f"state machine safety: {node.id} applied {entry} where others applied {known}")
        node.applied = entry.index
        node.applied_chain = _link(node.applied_chain, entry)
        self.max_committed = max(self.max_committed, entry.index)

    def _check_new_leader(self, nid: str, core: RaftCore) -> None:
        other = self.leaders.setdefault(core.term, nid)
        if other != nid:
            raise self.fail(f"two leaders in term {core.term}: {other} and {nid}")
        committed = self.max_committed
        if committed > core.log.snapshot.meta.index:
            if core.log.term(committed) != self.applied[committed][0]:
                raise self.fail(f"leader {nid} of term {core.term} lacks committed entry {committed}")


@dataclass(frozen=True)
class Schedule:
    """The random fault schedule drawn for one seed."""

    nodes: int
    chaos_ticks: int
    drop: float
    duplicate: float
    max_delay: int
    max_entries_per_msg: int
    max_inflight_msgs: int
    torn: float
    compact_retain: int


def draw_schedule(seed: int) -> Schedule:
    rng = random.Random(seed * 7919 + 1)
    return Schedule(
        nodes=3 if seed % 2 == 0 else 5,
        chaos_ticks=rng.randint(100, 250),
        drop=rng.choice([0.0, 0.02, 0.1, 0.25]),
        duplicate=rng.choice([0.0, 0.05, 0.2]),
        max_delay=rng.choice([3, 10, 25]),
        max_entries_per_msg=rng.choice([1, 2, 8, 64]),
        max_inflight_msgs=rng.choice([1, 4, 16]),
        torn=rng.choice([0.0, 0.002, 0.01]),
        compact_retain=rng.choice([0, 0, 3, 20]),
    )


def run_schedule(seed: int, liveness_ticks: int = 400) -> Simulation:
    """Chaos for a while, then heal everything and demand progress within a bound."""
    plan = draw_schedule(seed)
    sim = Simulation(
        seed,
        plan.nodes,
        max_entries_per_msg=plan.max_entries_per_msg,
        max_inflight_msgs=plan.max_inflight_msgs,
    )
    sim.net = NetParams(plan.drop, plan.duplicate, 1, plan.max_delay)
    sim.torn = plan.torn
    rng = sim.rng
    for _ in range(plan.chaos_ticks):
        up = sim.up()
        if up and rng.random() < 0.5:
            nid = rng.choice(up)
            for _ in range(rng.randint(1, 4)):
                if nid in sim.up():  # a torn save may have crashed it
                    sim.propose(nid)
        up = sim.up()
        if up and rng.random() < 0.2:
            sim.read(rng.choice(up))
        up = sim.up()
        if up and rng.random() < 0.02:
            sim.crash(rng.choice(up))
        down = sim.down()
        if down and rng.random() < 0.1:
            nid = rng.choice(down)
            sim.start(nid)
            sim._log(f"restart {nid}")
        if rng.random() < 0.02:
            shuffled = sim.ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            sim.partition(shuffled[:cut], shuffled[cut:])
        elif rng.random() < 0.03:
            sim.heal()
        up = sim.up()
        if up and rng.random() < 0.01:
            sim.transfer(rng.choice(up), rng.choice(sim.ids))
        up = sim.up()
        if up and rng.random() < 0.05:
            sim.compact(rng.choice(up), plan.compact_retain)
        sim.run_ticks(1)
    # Heal: every node up, network whole and reliable (still reordering by delay).
    sim.heal()
    for nid in sim.down():
        sim.start(nid)
        sim._log(f"restart {nid}")
    sim.net = NetParams(0.0, 0.0, 1, plan.max_delay)
    sim.torn = 0.0
    final: tuple[str, bytes] | None = None
    for _ in range(liveness_ticks):
        sim.run_ticks(1)
        lead = sim.leader()
        if final is None and lead is not None and not sim.pending():
            nid = rng.choice(sim.ids)
            final = (nid, sim.propose(nid))
        if final is not None and final[1] not in sim.acked:
            if final[1] not in sim.nodes[final[0]].proposals.values():
                final = None  # failed or timed out during a leader change: ask again
        if final is not None and final[1] in sim.acked and sim.stable():
            return sim
    raise sim.fail(
        f"liveness: not stable {liveness_ticks} ticks after healing "
        f"(leader={sim.leader()}, pending={sim.pending()}, final={final})"
    )
