"""The replicated state machine of a dsync node: one log, several services.

Every committed entry is a `dsync.fsm.v1.Command`.  The router keeps what all services
share — the cluster clock and the client sessions that make retried writes take effect
once — and hands each command to its service's component.

Time: only the leader's `Clock` entries move it (see command.proto).  Readings of one
term advance time by their difference; a new term starts a new epoch without moving
time, so a leader change never shortens a lease, and clocks of different nodes are
never compared.

Sessions (Raft thesis §6.3): a command with a client id and sequence number is applied
once; a retry gets the first result.  Each session remembers its last
`SESSION_RESULTS` results, and of those only as many as fit in `SESSION_RESULT_BYTES`
(serialized sizes) besides its newest, which it always keeps.  A command at or below
the highest forgotten sequence is refused rather than risk applying it twice.  A session
expires after `SESSION_IDLE_MS` without writes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from dsync.fsm.v1 import command_pb2
from server.fsm.base import ApplyContext, Code, Component, Emit, Refusal, Result, StateRestored

SESSION_RESULTS = 256
# What a session's older results may weigh, besides its newest one: retries of writes
# still in flight need them, and every replica holds them and every snapshot carries
# them (docs/design.md, "Exactly-once writes").
SESSION_RESULT_BYTES = 1 << 20
SESSION_IDLE_MS = 60 * 60 * 1000
MAX_CLIENT_ID_BYTES = 128


def _ignore(event: object) -> None:
    """Default event sink: nobody is waiting."""


@dataclass
class _Session:
    # sequence -> (result, its serialized size), in apply order; a result dropped for its
    # size leaves (None, 0): the write is known applied, its answer forgotten.
    results: OrderedDict[int, tuple[Result | None, int]] = field(default_factory=OrderedDict)
    kept_bytes: int = 0  # the sizes of `results`, summed
    last_seen_ms: int = 0
    # Highest sequence that left `results`.  A client's concurrent writes may commit out of
    # sequence order, so only this watermark, not the oldest result kept, tells a new
    # write from a retry whose answer is forgotten.
    forgotten_upto: int = 0

    def keep(self, sequence: int, result: Result) -> None:
        """Remember a result as the newest.  Beyond the count, the oldest leave (raising
        the watermark); beyond the bytes, the oldest answers are dropped but their
        sequences stay known as applied, so one large answer cannot make a client's other
        writes in flight look forgotten, or a never-applied lower sequence look applied."""
        size = _result_bytes(result)
        results = self.results
        results[sequence] = (result, size)
        self.kept_bytes += size
        while len(results) > SESSION_RESULTS:
            dropped, (_, dropped_size) = results.popitem(last=False)
            self.kept_bytes -= dropped_size
            self.forgotten_upto = max(self.forgotten_upto, dropped)
        budget = SESSION_RESULT_BYTES + size  # the newest is kept whatever its size
        if self.kept_bytes > budget:
            for older, (kept, kept_size) in results.items():
                if older == sequence or self.kept_bytes <= budget:
                    break
                if kept is not None:
                    results[older] = (None, 0)
                    self.kept_bytes -= kept_size


class DsyncStateMachine:
    """Implements `server.fsm.protocols.StateMachine` over the lock, queue and cache components."""

    def __init__(self, components: dict[str, Component]) -> None:
        unknown = set(components) - {"lock", "queue", "cache"}
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}: expected lock, queue, cache")
        self.components = components
        self.emit: Emit = _ignore
        self.clock_term = 0
        self.last_reading_ms = 0
        self.now_ms = 0
        self.applied_index = 0
        # Least recently active first, so expiry pops from the front.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    # ------------------------------------------------------------------ StateMachine

    def apply(self, index: int, command: bytes) -> object:
        self.applied_index = index
        try:
            cmd = command_pb2.Command.FromString(command)
        except DecodeError:
            return Refusal(Code.INVALID_ARGUMENT, "not a dsync command: the entry could not be decoded")
        op = cmd.WhichOneof("op")
        if op is None:
            return Refusal(Code.INVALID_ARGUMENT, "command names no operation")
        if op == "clock":
            self._tick(index, cmd.clock)
            return None
        component = self.components.get(op)
        if component is None:
            return Refusal(Code.INVALID_ARGUMENT, f"this node runs no {op} service")
        ctx = ApplyContext(index, self.now_ms, self.emit)
        if not cmd.client_id:
            return component.apply(getattr(cmd, op), ctx)
        return self._apply_once(cmd, op, component, ctx)

    def snapshot(self) -> bytes:
        snap = command_pb2.Snapshot(
            clock=command_pb2.ClockState(
                term=self.clock_term, last_reading_ms=self.last_reading_ms, now_ms=self.now_ms
            )
        )
        for client_id, session in self._sessions.items():
            entry = snap.sessions.add(
                client_id=client_id, last_seen_ms=session.last_seen_ms, forgotten_upto=session.forgotten_upto
            )
            for sequence, (result, _) in session.results.items():
                # A forgotten answer is a Result with no outcome.
                entry.results.add(sequence=sequence, result=None if result is None else _encode_result(result))
        for name, component in self.components.items():
            setattr(snap, name, component.snapshot())
        return snap.SerializeToString(deterministic=True)

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        snap = command_pb2.Snapshot.FromString(data)
        clock = (snap.clock.term, snap.clock.last_reading_ms, snap.clock.now_ms)  # not the message: it pins `snap`
        sessions: OrderedDict[str, _Session] = OrderedDict()
        for entry in snap.sessions:
            session = _Session(last_seen_ms=entry.last_seen_ms, forgotten_upto=entry.forgotten_upto)
            for cached in entry.results:
                result = _decode_result(cached.result)
                size = 0 if result is None else _result_bytes(result)
                session.results[cached.sequence] = (result, size)
                session.kept_bytes += size
            sessions[entry.client_id] = session
        installs = [component.prepare_restore(getattr(snap, name)) for name, component in self.components.items()]

        def install() -> None:
            self.clock_term, self.last_reading_ms, self.now_ms = clock
            self._sessions = sessions
            for component_install in installs:
                component_install()
            self.emit(StateRestored())

        return install

    # ------------------------------------------------------------------ internals

    def _tick(self, index: int, clock: command_pb2.Clock) -> None:
        if clock.term < self.clock_term:
            return  # a deposed leader's reading, committed late: its epoch is over
        if clock.term > self.clock_term:
            self.clock_term = clock.term
            self.last_reading_ms = clock.monotonic_ms
            return
        if clock.monotonic_ms <= self.last_reading_ms:
            return
        self.now_ms += clock.monotonic_ms - self.last_reading_ms
        self.last_reading_ms = clock.monotonic_ms
        self._expire_sessions()
        ctx = ApplyContext(index, self.now_ms, self.emit)
        for component in self.components.values():
            component.advance(ctx)

    def _apply_once(self, cmd: command_pb2.Command, op: str, component: Component, ctx: ApplyContext) -> Result:
        if len(cmd.client_id.encode()) > MAX_CLIENT_ID_BYTES:
            return Refusal(Code.INVALID_ARGUMENT, f"header.client_id: longer than {MAX_CLIENT_ID_BYTES} bytes")
        if cmd.sequence == 0:
            # Remembering a result under 0 would answer every later write of this client
            # with it: each new write needs a new number.
            return Refusal(Code.INVALID_ARGUMENT, "header.sequence: required (1 or more) with header.client_id")
        session = self._sessions.pop(cmd.client_id, None) or _Session()
        session.last_seen_ms = self.now_ms
        self._sessions[cmd.client_id] = session  # now the most recently active
        seen = session.results.get(cmd.sequence)
        if seen is not None and seen[0] is not None:
            return seen[0]
        if seen is not None or cmd.sequence <= session.forgotten_upto:
            known = "was applied, but" if seen is not None else f"is at or below {session.forgotten_upto}, and"
            return Refusal(
                Code.FAILED_PRECONDITION,
                f"header.sequence {cmd.sequence} {known} this client's session no longer keeps its outcome (it "
                f"keeps its last {SESSION_RESULTS} results, {SESSION_RESULT_BYTES} bytes of them besides the "
                "newest): check whether that write took effect by reading, and send new writes with new "
                "sequence numbers",
            )
        result = component.apply(getattr(cmd, op), ctx)
        session.keep(cmd.sequence, result)
        return result

    def _expire_sessions(self) -> None:
        horizon = self.now_ms - SESSION_IDLE_MS
        sessions = self._sessions
        while sessions:
            client_id = next(iter(sessions))
            if sessions[client_id].last_seen_ms > horizon:
                break
            del sessions[client_id]


def _result_bytes(result: Result) -> int:
    """What a result weighs in a session: its serialized size, the same on every replica
    and after a restore (deterministic, unlike the memory Python spends on it)."""
    if isinstance(result, Refusal):
        return len(result.message.encode())
    return result.ByteSize()


def _encode_result(result: Result) -> command_pb2.Result:
    if isinstance(result, Refusal):
        return command_pb2.Result(error=command_pb2.Error(code=int(result.code), message=result.message))
    packed = any_pb2.Any()
    packed.Pack(result, deterministic=True)
    return command_pb2.Result(response=packed)


def _decode_result(result: command_pb2.Result) -> Result | None:
    outcome = result.WhichOneof("outcome")
    if outcome is None:
        return None  # an answer dropped for its size
    if outcome == "error":
        return Refusal(Code(result.error.code), result.error.message)
    descriptor = descriptor_pool.Default().FindMessageTypeByName(result.response.TypeName())
    message = message_factory.GetMessageClass(descriptor)()
    result.response.Unpack(message)
    return message
