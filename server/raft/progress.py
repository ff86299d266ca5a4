"""The leader's view of one follower's log (etcd-io/raft's Progress).

PROBE: one AppendEntries at a time until the follower's match index is found.
REPLICATE: pipelined, `next` advanced optimistically, bounded by the in-flight window.
SNAPSHOT: the follower needs a snapshot; appends wait until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 1
    REPLICATE = 2
    SNAPSHOT = 3


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "inflight_bytes",
        "recent_active",
        "pending_snapshot",
        "snapshot_ticks",
        "sent_commit",
        "match_at_beat",
        "incarnation",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0  # invariant: match < next
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[tuple[int, int]] = deque()  # (last index, bytes) per append
        self.inflight_bytes = 0
        self.recent_active = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.sent_commit = 0
        self.match_at_beat = 0  # match when the previous heartbeat answer came
        self.incarnation = 0  # of the follower's latest answer; 0 before the first

    def paused(self, max_msgs: int, max_bytes: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.pending_snapshot = 0
        self.snapshot_ticks = 0

    def sent(self, last: int, size: int) -> None:
        """Record an AppendEntries that carried entries up to `last`."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append((last, size))
            self.inflight_bytes += size
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def acked(self, index: int) -> bool:
        """A successful AppendEntries response up to `index`; True if match moved."""
        moved = index > self.match
        if moved:
            self.match = index
            self.next = max(self.next, index + 1)
        self.probe_sent = False
        while self.inflight and self.inflight[0][0] <= index:
            self.inflight_bytes -= self.inflight.popleft()[1]
        return moved

    def note_heartbeat_answer(self) -> bool:
        """Record a heartbeat answer; True if this follower may have lost an append.

        Under load answers come while appends are out.  A follower in REPLICATE whose
        match moved since its previous answer is still taking them in, and an empty
        append would only draw a second answer; one whose match stood still may be
        waiting on a lost one.  Match never passes a lost append, so a loss shows once
        match stands still between two answers: at worst one answer later for every
        append that was in flight ahead of the lost one.
        """
        stalled = self.state is not ProgressState.REPLICATE or self.match == self.match_at_beat
        self.match_at_beat = self.match
        return stalled

    def answered_from(self, incarnation: int) -> bool:
        """Note the process life an answer came from; True if the follower restarted.

        On storage that does not fsync every write, a follower back from a machine crash
        may hold less than it acknowledged.  Its refusals of appends at or below the
        recorded match would look stale, and it would never be caught up while this
        leader lasts.  So a new incarnation makes match unknown again, and the leader
        probes down from `next`, where its appends had got to (a snapshot being sent is
        sent again).  A late answer from the previous life counts as one more restart:
        its ack puts back what that life held, until the new life answers again.  0
        (messages other than answers) changes nothing.
        """
        if not incarnation or incarnation == self.incarnation:
            return False
        known, self.incarnation = self.incarnation, incarnation
        if not known:
            return False
        next_index = self.next
        self._reset(ProgressState.PROBE)
        self.next = next_index
        self.match = 0
        self.match_at_beat = 0
        self.sent_commit = 0
        return True

    def release_one(self) -> None:
        if len(self.inflight):
            self.inflight_bytes -= self.inflight.popleft()[1]

    def rejected(self, rejected_prev: int, hint_next: int) -> bool:
        """A rejected AppendEntries for prev index `rejected_prev`; False if the reply is stale.

        `hint_next` is where the leader's fast back-off says to try next; the new `next`
        never goes below match + 1 nor above the rejected prev index.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected_prev <= self.match:
                return False
        elif rejected_prev != self.next - 1:
            return False
        next_index = max(self.match + 1, min(hint_next, rejected_prev))
        self._reset(ProgressState.PROBE)
        self.next = next_index
        return True
