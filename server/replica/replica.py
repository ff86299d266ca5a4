"""The asyncio driver of one node's Raft core.

One task owns the core.  Everything else -- peer messages, proposals, reads, leadership
transfers -- only queues an input and wakes that task, so the core is never touched
while a Ready is being carried out.  Each turn of the loop steps every queued input
into the core, fires the ticks that are due, and carries out one Ready: persist (one
storage round trip), send, apply, answer, advance -- committed entries already on disk
are applied before the save, not after it.  Inputs that arrive while a save is
in flight go into the next Ready together: that is where batching comes from -- many
proposals per Ready, one storage round trip per Ready.

Results travel by request id rather than by log index: each proposal's entry carries
its id (see `envelope`), and applying an entry completes the local waiter with that id,
if any.  The core's proposal outcomes are needed only for failures.

The log is bounded: once `snapshot_entries` entries are applied past the latest
snapshot, the replica snapshots its state machine, saves the snapshot, and compacts
the log (in storage and in the core) up to `snapshot_catchup_entries` before it; a
restart restores that snapshot and replays only the log after it.  A follower whose
next entry the leader no longer has is sent the snapshot instead; one that keeps up,
or lags by fewer than the catch-up entries, is sent entries.

The replica is fail-stop: if storage, transport or state machine raises, the loop ends,
every waiter fails with `Stopped`, and `join()` re-raises the fault.  Restarting means
building a new core from storage (`open_core`) and a new Replica around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from server.fsm.protocols import StateMachine, restore
from server.raft import (
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NodeId,
    ProposalOutcome,
    RaftCore,
    Ready,
    ReadState,
    Role,
    Snapshot,
)
from server.storage.protocols import RaftStorage
from server.transport.protocols import Transport

from .envelope import RequestIds, unwrap, wrap
from .errors import (
    CommitUnknown,
    NoLeader,
    Overloaded,
    ReadTimeout,
    ReplicaError,
    Stopped,
    proposal_error,
    read_error,
)
from .stats import ReplicaStats
from .waiters import Proposal, Proposals, Reads

logger = logging.getLogger(__name__)

# Entries applied between two yields to the event loop: a long catch-up must not hold
# up the rest of the node (its RPCs, the transport's streams) for more than a moment.
APPLY_CHUNK = 512
# Adaptive batching: below this many new proposals (on a follower, proposals and reads) in
# a turn, while others are still in flight, wait BATCH_WAIT seconds for more before
# writing and sending.
BATCH_TARGET = 32
BATCH_WAIT = 0.002
# The least a timer of the loop is set ahead.  uvloop's clock counts whole milliseconds
# and fires a timer due less than half of one ahead at once, so a wait for a tick due a
# hair after the current millisecond spun the loop until the clock moved on (dozens of
# turns a tick, tests/replica/test_runtime.py).  A tick 1 ms late is nothing to one of 50.
TIMER_FLOOR = 0.001
# Committed entries already on disk are applied before a Ready's new entries are saved.
# A follower answers the leader only after that save, so it applies early only a short
# prefix: a long catch-up must not hold back its answer, which the next commit awaits.
EARLY_APPLY_MAX = 64


class Replica:
    """One node's replica of the log and of the state machine it drives.

    `fsm` must be empty: when the core starts after a snapshot (as `open_core` builds
    it from storage), the replica restores `fsm` from that snapshot.  Storage and
    transport belong to the caller, who closes them after `stop()`.  Call every method
    from the event loop's thread; nothing here is thread-safe.

    tick_interval: seconds per Raft tick (the core's timeouts are counted in ticks).
    max_pending: proposals (and, separately, reads) in flight before new ones get
        `Overloaded` -- a bound on memory and on queueing delay.
    max_apply_lag: committed-but-unapplied entries beyond which proposals get
        `Overloaded`: their results would wait behind the whole backlog.
    propose_timeout: the longest a proposal or read barrier waits for its answer.
    snapshot_entries: entries applied past the latest snapshot before the next one is
        taken and the log compacted: bounds the log's memory and storage, and what a
        restart replays, at the cost of serialising the state machine (on a worker
        thread, while this replica waits) that often.
    snapshot_catchup_entries: of the entries a new snapshot covers, how many the log
        keeps, so that a follower that far behind still gets entries, not the snapshot.
    """

    def __init__(
        self,
        core: RaftCore,
        storage: RaftStorage,
        transport: Transport,
        fsm: StateMachine,
        *,
        tick_interval: float = 0.05,
        max_pending: int = 10_000,
        max_apply_lag: int = 8192,
        propose_timeout: float = 5.0,
        snapshot_entries: int = 100_000,
        snapshot_catchup_entries: int = 5_000,
    ) -> None:
        if tick_interval <= 0 or propose_timeout <= 0:
            raise ValueError("tick_interval and propose_timeout must be positive seconds")
        if max_pending < 1 or max_apply_lag < 1 or snapshot_entries < 1:
            raise ValueError("max_pending, max_apply_lag and snapshot_entries must be at least 1")
        if snapshot_catchup_entries < 0:
            raise ValueError(f"snapshot_catchup_entries must not be negative, got {snapshot_catchup_entries}")
        self._core = core
        self._storage = storage
        self._transport = transport
        self._fsm = fsm
        self._tick_interval = tick_interval
        self._max_pending = max_pending
        self._max_apply_lag = max_apply_lag
        self._propose_timeout = propose_timeout
        self._snapshot_entries = snapshot_entries
        self._snapshot_catchup_entries = snapshot_catchup_entries
        self.stats = ReplicaStats()
        snapshot = core.log.snapshot
        if snapshot.meta.index and core.log.applied == snapshot.meta.index:
            restore(fsm, snapshot.data)
        # Invariant: _applied <= the core's commit index; the state machine holds exactly
        # the entries up to _applied.
        self._applied = core.log.applied
        # What storage holds: term and vote must reach it before anything depends on them.
        self._saved_hard = HardState(core.term, core.vote, core.log.committed)
        self._ids = RequestIds()
        self._proposals = Proposals()
        self._reads = Reads()
        # Inputs queued for the loop, stepped into the core at the top of its next turn.
        self._inbox: list[Message] = []
        self._new_proposals: list[Proposal] = []
        # Forwarded proposals (PROPOSE), each with how many of our own were queued before it.
        self._forwarded: list[tuple[int, Message]] = []
        self._new_reads: list[bytes] = []
        self._read_batches: dict[bytes, list[bytes]] = {}  # a barrier's context -> the reads sharing it
        self._transfers: list[NodeId] = []
        self._stepped_proposals = 0  # how many proposals the last turn took in
        self._log_end_before = 0  # the log's last index before the last turn's proposals
        self._stepped_messages = 0  # how many peer messages the last turn took in
        self._stepped_reads = 0  # how many reads the last turn asked a barrier for
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # replaced after every Ready; see _pulse
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed: str | None = None  # why the replica stopped, once it has
        self._failure: Exception | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("a Replica runs once: to restart, build a new one with open_core()")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"replica-{self.id}")

    async def stop(self) -> None:
        """Stop the loop at once and fail every waiter with `Stopped`.

        Cancelling mid-save is safe: storage then holds either the whole batch or none
        of it, exactly as after a crash, and this Replica is never used again.
        """
        if self._closed is None:
            self._closed = f"replica {self.id} was stopped"
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self._fail_waiters()

    async def join(self) -> None:
        """Wait until the loop ends; re-raise the fault that ended it, if one did."""
        if self._task is None:
            raise RuntimeError("the replica was never started")
        await asyncio.wait([self._task])
        if self._failure is not None:
            raise self._failure

    # ------------------------------------------------------------------ inputs

    def inbox(self, messages: list[Message]) -> None:
        """The transport's `Inbox`: queue peer messages for the loop.  Never blocks."""
        if self._closed is None:
            own = len(self._new_proposals)
            for message in messages:
                if message.type is MsgType.PROPOSE:
                    self._forwarded.append((own, message))
                else:
                    self._inbox.append(message)
            self._wake.set()

    async def propose(self, command: bytes) -> object:
        """Replicate `command`; return what the state machine's `apply` returned for it.

        Works on any replica: a follower forwards to its leader.  Raises a `ReplicaError`
        when the command is not known to be committed; its `maybe_committed` tells
        whether a retry could apply it twice.  Never waits longer than `propose_timeout`.
        """
        try:
            return await self._propose(command)
        except ReplicaError as exc:
            self.stats.proposals_failed[type(exc).__name__] += 1
            raise

    async def read_barrier(self) -> int:
        """Wait until reading the local state machine is linearizable (ReadIndex, thesis §6.4).

        Returns the read index: from now on the local state machine holds every write
        committed before this call began.  Raises a `ReplicaError` if leadership cannot
        be confirmed within `propose_timeout`.
        """
        try:
            index = await self._read_barrier()
        except ReplicaError as exc:
            self.stats.reads_failed[type(exc).__name__] += 1
            raise
        self.stats.reads_served += 1
        return index

    def transfer_leader(self, target: NodeId) -> None:
        """Ask the leader to hand over to `target` once it is caught up; watch `leader_id` for the result."""
        voters = self._core.config.voters
        if target not in voters:
            raise ValueError(f"cannot transfer leadership to {target!r}: pick one of the voters {list(voters)}")
        self._check_open()
        self._transfers.append(target)
        self._wake.set()

    # ------------------------------------------------------------------ observing

    @property
    def id(self) -> NodeId:
        return self._core.id

    @property
    def role(self) -> Role:
        return self._core.role

    @property
    def leader_id(self) -> NodeId:
        """The leader this replica follows ("" when it knows none)."""
        return self._core.leader

    @property
    def term(self) -> int:
        return self._core.term

    @property
    def commit_index(self) -> int:
        return self._core.log.committed

    @property
    def applied_index(self) -> int:
        """The last log index the state machine holds."""
        return self._applied

    def follower_lag(self) -> dict[NodeId, int]:
        """On a leader, how many entries each follower is known to lack; empty elsewhere.

        A follower whose match the leader has not learned yet (just elected, or the
        follower restarted) is left out rather than counted as lacking the whole log."""
        core = self._core
        if core.role is not Role.LEADER:
            return {}
        last = core.log.last_index
        return {peer: last - pr.match for peer, pr in core.progress.items() if pr.match}

    def status(self) -> dict[str, object]:
        """The core's status, with `applied` as the state machine holds it, plus the replica's own."""
        status = self._core.status()
        status.update(
            applied=self._applied,
            pending_proposals=len(self._proposals),
            pending_reads=len(self._reads),
            last_tick_lag=self.stats.last_tick_lag,
            stopped=self._closed,
        )
        return status

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Until `predicate()` holds, checked after every Ready; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._closed is not None:
                    raise Stopped(self._closed)
                await self._progress.wait()

    async def wait_for_leader(self, timeout: float) -> NodeId:
        try:
            await self.wait_for(lambda: bool(self._core.leader), timeout)
        except TimeoutError:
            raise NoLeader(
                f"{self.id} saw no leader elected within {timeout} s: check that a majority of "
                f"{list(self._core.config.voters)} is up and can reach each other"
            ) from None
        return self._core.leader

    # ------------------------------------------------------------------ callers' side

    def _check_open(self) -> None:
        if self._closed is not None:
            raise Stopped(f"{self._closed}: send the request to another node", leader=self._core.leader)
        if self._loop is None:
            raise RuntimeError("the replica is not running: call start() first")

    async def _propose(self, command: bytes) -> object:
        self._check_open()
        assert self._loop is not None
        if len(self._proposals) >= self._max_pending:
            raise Overloaded(
                f"{self.id} has {len(self._proposals)} proposals in flight (max_pending): "
                "back off and retry",
                leader=self._core.leader,
            )
        lag = self._core.log.committed - self._applied
        if lag > self._max_apply_lag:
            raise Overloaded(
                f"{self.id} is {lag} committed entries behind in applying (max_apply_lag "
                f"{self._max_apply_lag}): back off and retry, or use another node",
                leader=self._core.leader,
            )
        request_id = self._ids.next()
        proposal = Proposal(request_id, wrap(request_id, command), self._loop.create_future(), self._loop.time())
        self._proposals.add(proposal)
        self._new_proposals.append(proposal)
        self._wake.set()
        timer = self._loop.call_at(proposal.started + self._propose_timeout, _time_out, proposal.future)
        try:
            return await proposal.future
        except TimeoutError:
            if not proposal.in_core:
                # The loop never got to it (stuck on storage): it will now never be proposed.
                raise Overloaded(
                    f"{self.id} did not get to the proposal within {self._propose_timeout} s "
                    "(is its storage slow?): back off and retry",
                    leader=self._core.leader,
                ) from None
            raise CommitUnknown(
                f"no commit within {self._propose_timeout} s; the proposal may still commit: "
                "retry with the same request id",
                leader=self._core.leader,
            ) from None
        finally:
            timer.cancel()
            self._proposals.forget(proposal)

    async def _read_barrier(self) -> int:
        self._check_open()
        assert self._loop is not None
        if len(self._reads) >= self._max_pending:
            raise Overloaded(
                f"{self.id} has {len(self._reads)} reads in flight (max_pending): back off and retry",
                leader=self._core.leader,
            )
        context = self._ids.next().to_bytes(8, "big")
        future: asyncio.Future[int] = self._loop.create_future()
        self._reads.add(context, future)
        self._new_reads.append(context)
        self._wake.set()
        timer = self._loop.call_later(self._propose_timeout, _time_out, future)
        try:
            return await future
        except TimeoutError:
            raise ReadTimeout(
                f"{self.id} could not confirm a read point within {self._propose_timeout} s: retry, "
                "on another node if this one is cut off",
                leader=self._core.leader,
            ) from None
        finally:
            timer.cancel()
            self._reads.forget(context)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            await self._drive()
        except Exception as exc:
            self._failure = exc
            self._closed = f"replica {self.id} failed ({exc!r}); restart the node: its state is in storage"
            logger.exception("replica %s stopped on a fault", self.id)
            self._fail_waiters()

    async def _drive(self) -> None:
        assert self._loop is not None
        loop = self._loop
        core = self._core
        next_tick = loop.time() + self._tick_interval
        while True:
            self._wake.clear()
            self._step_inputs()
            now = loop.time()
            if now >= next_tick:
                next_tick = self._tick(now, next_tick)
            if core.has_ready():
                if self._worth_waiting():
                    # Only a few new requests while others are still out: a moment's wait lets
                    # more join this Ready, so one save and one message carry them all.
                    await asyncio.sleep(BATCH_WAIT)
                    self._step_inputs()
                await self._carry_out(core.ready())
                if self._applied - core.log.snapshot.meta.index >= self._snapshot_entries:
                    await self._compact()
                # Let inputs in before the next Ready, even when storage answered without
                # suspending (the in-memory twin does): it batches them and starves no one.
                await asyncio.sleep(0)
            else:
                timer = loop.call_at(max(next_tick, loop.time() + TIMER_FLOOR), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()

    def _worth_waiting(self) -> bool:
        core = self._core
        if core.role is Role.LEADER:
            # An append round is out: entries logged before this turn's are not committed
            # yet.  This turn's own do not count, or a lone write on an idle leader would
            # always wait, for company that is not coming.
            in_flight = self._log_end_before > core.log.committed
            return in_flight and 0 < self._stepped_proposals < BATCH_TARGET
        # A follower forwarding proposals or reads while other requests of its own are
        # still pending, and nothing from the leader waits for its answer this turn.
        if core.role is not Role.FOLLOWER or not core.leader or self._stepped_messages:
            return False
        fresh = self._stepped_proposals + self._stepped_reads
        return 0 < fresh < BATCH_TARGET and len(self._proposals) + len(self._reads) > fresh

    def _step_inputs(self) -> None:
        core = self._core
        self._stepped_messages = len(self._inbox) + len(self._forwarded)
        self._stepped_reads = 0
        # Messages that carry no command first: one may name a new leader to forward to.
        if self._inbox:
            messages, self._inbox = self._inbox, []
            for message in messages:
                core.step(message)
        self._step_commands()
        if self._new_reads:
            # One barrier for every read that arrived since the last turn: each began
            # before it is asked for, so its answer is a linearizable point for them all.
            contexts, self._new_reads = self._new_reads, []
            self._stepped_reads = len(contexts)
            head = contexts[0]
            if len(contexts) > 1:
                self._read_batches[head] = contexts[1:]
            core.read_index(head)
        if self._transfers:
            targets, self._transfers = self._transfers, []
            for target in targets:
                core.transfer_leader(target)

    def _step_commands(self) -> None:
        """Our own proposals and forwarded ones, in the order they reached this node.

        On a leader that order is the log's, so a clock reading (server/api/clock.py) sits
        after every command that arrived before it was taken and before every command that
        arrived after: a deadline that starts at the next clock entry after its command
        starts no earlier than the command arrived, and a refresh or extension that arrived
        before a deadline's reading is applied before the deadline passes.
        """
        core = self._core
        self._log_end_before = core.log.last_index
        proposals, self._new_proposals = self._new_proposals, []
        forwarded, self._forwarded = self._forwarded, []
        fresh = len(proposals)
        stepped = 0  # forwarded ones
        for position in range(len(proposals) + 1):  # every mark is at most len(proposals)
            while stepped < len(forwarded) and forwarded[stepped][0] <= position:
                message = forwarded[stepped][1]
                fresh += len(message.entries)
                core.step(message)
                stepped += 1
            if position < len(proposals):
                proposal = proposals[position]
                if not proposal.future.done():  # else its caller gave up before we got to it
                    self._proposals.taken(proposal, core.propose(proposal.data))
        self._stepped_proposals = fresh

    def _tick(self, now: float, due: float) -> float:
        """Tick once and return when the next tick is due.

        Due times advance by whole intervals from the start, so ticks do not drift.  A
        loop more than a tick late skips the ticks it missed instead of firing them in
        a burst: a burst would expire election timers before the messages that arrived
        meanwhile are read.  Slow ticks only delay elections, which is safe.
        """
        stats = self.stats
        stats.ticks += 1
        stats.last_tick_lag = now - due
        self._core.tick()
        due += self._tick_interval
        if due <= now:
            missed = int((now - due) // self._tick_interval) + 1
            stats.ticks_skipped += missed
            due += missed * self._tick_interval
        return due

    async def _carry_out(self, rd: Ready) -> None:
        """The Ready's effects, in the order its docstring demands."""
        stats = self.stats
        stats.readies += 1
        if rd.soft_state is not None:
            stats.saw_leader(rd.soft_state.leader)
        sent_early = rd.send_first and bool(rd.messages)
        if sent_early:
            # A leader's appends travel while it writes them (thesis §10.2.1): its own
            # disk and its followers' work in parallel, one fsync off every commit.
            self._send(rd.messages)
        committed = rd.committed
        if committed and rd.entries and rd.snapshot is None:
            # Committed entries this node already holds on disk need not wait for the
            # new ones to be written: their callers are answered one fsync sooner.
            durable = max(0, min(len(committed), rd.entries[0].index - committed[0].index))
            if durable and (rd.send_first or durable <= EARLY_APPLY_MAX):
                await self._apply(committed[:durable])
                committed = committed[durable:]
        if rd.snapshot is not None:
            # The snapshot, then the log's new start point, go first: the entries saved
            # next begin after it, and a restart must find the state it starts from.
            await self._store_snapshot(rd.snapshot)
            stats.snapshots_installed += 1
        hard_state = rd.hard_state
        if hard_state is not None and not rd.entries and self._only_commit_moved(hard_state):
            # The commit index is volatile in Raft (thesis §3.8): a restarted node learns it
            # again from the leader.  Skipping this save takes a Redis round trip (an fsync)
            # off every commit; term and vote are never skipped.
            hard_state = None
        if hard_state is not None or rd.entries:
            began = time.perf_counter()
            await self._storage.save(hard_state, rd.entries)
            if hard_state is not None:
                self._saved_hard = hard_state
            took = time.perf_counter() - began
            stats.saves += 1
            stats.save_seconds += took
            stats.save_latency.observe(took)
            if rd.entries:
                stats.append_latency.observe(took)
            stats.entries_saved += len(rd.entries)
        if rd.messages and not sent_early:
            self._send(rd.messages)
        if rd.snapshot is not None:
            # Decoded on a worker thread while the loop goes on serving reads of the old
            # state (0.3-0.4 s for 100,000 cache entries or queue messages), then swapped in.
            (await asyncio.to_thread(self._fsm.prepare_restore, rd.snapshot.data))()
            self._applied = rd.snapshot.meta.index
            self._reads.release(self._applied)
        if committed:
            await self._apply(committed)
        self._settle(rd.outcomes)
        self._answer(rd.read_states)
        self._core.advance(rd)
        self._pulse()

    async def _compact(self) -> None:
        """Snapshot the state machine at the applied index and compact the log up to the
        catch-up entries before it."""
        core = self._core
        index = self._applied
        began = time.perf_counter()
        # Serialising a large state takes a while (about 0.2 s for 100,000 cache entries).
        # On a worker thread it leaves the event loop to the node's other work -- reads,
        # health, the peer streams -- instead of stalling it.  That is safe because this
        # loop is the state machine's only writer and applies nothing until the snapshot
        # is taken; everyone else only reads it.
        core.compact(index, await asyncio.to_thread(self._fsm.snapshot), self._snapshot_catchup_entries)
        snapshot = core.log.snapshot
        await self._store_snapshot(snapshot)
        self.stats.snapshots += 1
        self.stats.snapshot_seconds += time.perf_counter() - began
        logger.info(
            "replica %s: snapshot at index %d (%d bytes), log compacted", self.id, index, len(snapshot.data)
        )

    async def _store_snapshot(self, snapshot: Snapshot) -> None:
        """The snapshot first, then the core log's start (the snapshot's own once installed
        from a leader): a crash between leaves both (see open_core)."""
        await self._storage.save_snapshot(snapshot)
        await self._storage.compact(self._core.log.start)

    def _send(self, messages: list[Message]) -> None:
        self._transport.send(messages)
        stats = self.stats
        stats.messages_sent += len(messages)
        for message in messages:
            if message.type is MsgType.SNAPSHOT:
                stats.snapshots_sent += 1

    def _only_commit_moved(self, hard_state: HardState) -> bool:
        saved = self._saved_hard
        return hard_state.term == saved.term and hard_state.vote == saved.vote

    async def _apply(self, entries: list[Entry]) -> None:
        fsm = self._fsm
        stats = self.stats
        for start in range(0, len(entries), APPLY_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = entries[start : start + APPLY_CHUNK]
            began = time.perf_counter()
            for entry in chunk:
                if entry.kind is EntryKind.NORMAL:
                    request_id, command = unwrap(entry.data)
                    result = fsm.apply(entry.index, command)
                    if request_id is not None:
                        self._complete(request_id, result)
                self._applied = entry.index
            stats.apply_seconds += time.perf_counter() - began
            stats.entries_applied += len(chunk)
            self._reads.release(self._applied)

    def _complete(self, request_id: int, result: object) -> None:
        proposal = self._proposals.by_request(request_id)
        if proposal is None or proposal.future.done():
            return  # proposed elsewhere, or its caller gave up
        proposal.future.set_result(result)
        assert self._loop is not None
        took = self._loop.time() - proposal.started
        self.stats.proposals_committed += 1
        self.stats.commit_seconds += took
        self.stats.commit_latency.observe(took)

    def _settle(self, outcomes: list[ProposalOutcome]) -> None:
        """Fail the proposals the core gave up on; successes were answered when applied."""
        for outcome in outcomes:
            if outcome.reason is None:
                continue
            proposal = self._proposals.by_pid(outcome.proposal_id)
            if proposal is not None and not proposal.future.done():
                proposal.future.set_exception(proposal_error(outcome.reason, self.id, self._core.leader))

    def _answer(self, states: list[ReadState]) -> None:
        reads, applied, error = self._reads, self._applied, self._read_error
        for state in states:
            reads.answer(state, applied, error)
            for context in self._read_batches.pop(state.context, ()):
                reads.answer(ReadState(context, state.index, state.reason), applied, error)

    def _read_error(self, state: ReadState) -> ReplicaError:
        assert state.reason is not None
        return read_error(state.reason, self.id, self._core.leader)

    def _pulse(self) -> None:
        """Wake everyone in `wait_for`: they re-check their condition."""
        self._progress.set()
        self._progress = asyncio.Event()

    def _fail_waiters(self) -> None:
        reason = self._closed or f"replica {self.id} stopped"
        leader = self._core.leader
        for proposal in self._proposals:
            if not proposal.future.done():
                fate = "it may still commit" if proposal.in_core else "it was never proposed"
                proposal.future.set_exception(
                    Stopped(f"{reason} ({fate}): retry on another node", leader=leader, maybe_committed=proposal.in_core)
                )
        self._reads.fail_all(lambda: Stopped(f"{reason}: retry the read on another node", leader=leader))
        self._inbox.clear()
        self._forwarded.clear()
        self._new_proposals.clear()
        self._new_reads.clear()
        self._read_batches.clear()
        self._transfers.clear()
        self._pulse()


def _time_out(future: asyncio.Future[Any]) -> None:
    """A waiter's deadline: one timer on its future.  An asyncio.timeout scope sets one
    timer too, but its entry and exit cost more than the timer on this per-request path."""
    if not future.done():
        future.set_exception(TimeoutError())
