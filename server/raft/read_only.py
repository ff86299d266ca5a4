"""ReadIndex bookkeeping on the leader (thesis §6.4).

Reads that arrive together share one heartbeat round (and the core keeps one round out
at a time, so reads arriving meanwhile share the next): the leader records its commit
index, broadcasts heartbeats tagged with the round number, and once a majority has
answered a round, that round and every earlier one are safe to serve.  An answer to
a later round also confirms earlier ones, since it proves leadership after they began.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from server.raft.types import NodeId


@dataclass(slots=True)
class ReadRequest:
    context: bytes
    origin: NodeId  # the node that asked: the leader itself, or a follower to answer


@dataclass(slots=True)
class ReadRound:
    number: int
    index: int
    requests: list[ReadRequest]
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    __slots__ = ("_rounds", "_next_round", "batch")

    def __init__(self) -> None:
        self._rounds: deque[ReadRound] = deque()
        self._next_round = 1
        self.batch: list[ReadRequest] = []  # waiting for the next round to start

    def start_round(self, index: int, self_id: NodeId) -> ReadRound:
        round_ = ReadRound(self._next_round, index, self.batch, {self_id})
        self._next_round += 1
        self.batch = []
        self._rounds.append(round_)
        return round_

    def ack(self, number: int, voter: NodeId, quorum: int) -> list[ReadRound]:
        """Record `voter`'s answer to round `number`; return the rounds now confirmed."""
        confirmed_upto = 0
        for round_ in self._rounds:
            if round_.number > number:
                break
            round_.acks.add(voter)
            if len(round_.acks) >= quorum:
                confirmed_upto = round_.number
        done: list[ReadRound] = []
        while self._rounds and self._rounds[0].number <= confirmed_upto:
            done.append(self._rounds.popleft())
        return done

    def newest_round(self) -> int:
        """The number of the newest round still waiting for a quorum, or 0."""
        return self._rounds[-1].number if self._rounds else 0

    def drain(self) -> list[ReadRequest]:
        """Every request not yet answered: used when leadership is lost."""
        pending = [req for round_ in self._rounds for req in round_.requests]
        pending.extend(self.batch)
        self._rounds.clear()
        self.batch = []
        return pending
