"""The Raft consensus core: a deterministic state machine with no I/O.

Driven by `tick`, `step`, `propose`, `read_index`, `transfer_leader` and `compact`;
it answers with one `Ready` batch of effects at a time (see `Ready` for the order in
which the driver must carry them out).  Time is a tick count and randomness comes
from the injected generator, so the same inputs and seed give the same behaviour.

Implements, after the Raft paper and Ongaro's thesis: elections with randomized
timeouts, PreVote (§9.6) and CheckQuorum (§6.2); replication with batching,
pipelining and fast back-off (§5.3); the commit rule for the leader's own term
with a no-op on taking office (§5.4.2, §8); ReadIndex (§6.4); leadership transfer
(§3.10); a log compacted behind a snapshot, keeping catch-up entries, and InstallSnapshot
for followers behind its start (§5.1 of chapter 5).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Protocol

from server.raft.log import RaftLog
from server.raft.progress import Progress, ProgressState
from server.raft.quorum import committed_index, majority, tally
from server.raft.read_only import ReadOnly, ReadRequest, ReadRound
from server.raft.types import (
    Config,
    Entry,
    EntryKind,
    FailReason,
    HardState,
    Message,
    MsgType,
    NodeId,
    ProposalOutcome,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

# Messages between a follower and its leader that stand outside the term rules:
# they ask the leader to act for a client and never change anyone's term.
_FORWARDING = frozenset(
    {
        MsgType.PROPOSE,
        MsgType.PROPOSE_RESP,
        MsgType.READ_INDEX,
        MsgType.READ_INDEX_RESP,
        MsgType.TRANSFER_LEADER,
    }
)
_FROM_LEADER = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})
_MAX_APPLY_BATCH = 4096


class Rng(Protocol):
    def randrange(self, start: int, stop: int) -> int: ...


class RaftCore:
    """One node's consensus state.  Not thread-safe: one driver calls it at a time."""

    def __init__(
        self,
        config: Config,
        rng: Rng,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Iterable[Entry] = (),
        log_start: SnapshotMeta | None = None,
    ) -> None:
        """`entries` follow `log_start` (by default the snapshot's index), which may lie
        before the snapshot: a compacted log keeps some of the entries its snapshot covers."""
        hs = hard_state or HardState()
        self.id = config.node_id
        self.config = config
        self._rng = rng
        self.peers = tuple(v for v in config.voters if v != config.node_id)
        self._members = frozenset(config.voters)
        self.quorum = majority(len(config.voters))
        self.term = hs.term
        self.vote = hs.vote
        base = snapshot or Snapshot(SnapshotMeta(0, 0, config.voters))
        self.log = RaftLog(base, list(entries), hs.commit, log_start)
        self.role = Role.FOLLOWER
        self.leader: NodeId = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._ticks = 0
        self._votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self._read_only = ReadOnly()
        self._reads_before_commit: list[ReadRequest] = []  # leader, until it commits in its term
        self._transferee: NodeId = ""
        self._transfer_elapsed = 0
        self._broadcast_due = False
        self._msgs: list[Message] = []
        self._outcomes: list[ProposalOutcome] = []
        self._read_states: list[ReadState] = []
        # Random start: a late answer meant for an earlier life of this node must not
        # match a proposal of this one.
        self._next_pid = rng.randrange(1, 1 << 62)
        # Proposals whose (term, index) is known, resolved once that index is applied.
        self._tracked: list[tuple[int, int, int]] = []  # heap of (index, term, pid)
        self._resolved_term = 0
        # Follower side: the last index at which our log is known to match this term's
        # leader's, learned in this process's life.  Heartbeats move commit no further:
        # after a machine crash, storage short of fsync on every write may hold other
        # entries than those a leader counted as ours (a lost truncation brings back
        # overwritten ones), and the leader learns of the restart only from our answer.
        self._leader_match = self.log.committed
        # Follower side: proposals and reads waiting for the leader; values are deadlines.
        self._forward: list[tuple[int, bytes]] = []
        self._awaiting_proposals: dict[int, int] = {}
        self._awaiting_reads: dict[bytes, int] = {}
        self._prev_hard = hs
        self._prev_soft = SoftState(self.role, self.leader, self.term)
        self._ready_out = False

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self._ticks += 1
        self._expire_awaiting()
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._timeout:
                self._campaign(force=False)

    def propose(self, data: bytes) -> int:
        """Submit a command; returns the proposal id its `ProposalOutcome` will carry."""
        pid = self._next_pid
        self._next_pid += 1
        if self.role is Role.LEADER:
            if self._transferee:
                self._outcomes.append(ProposalOutcome(pid, reason=FailReason.NOT_LEADER))
            else:
                self._append_own(pid, data)
        elif self.leader:
            self._forward.append((pid, data))
        else:
            self._outcomes.append(ProposalOutcome(pid, reason=FailReason.NO_LEADER))
        return pid

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; answered by a `ReadState` with `context`.

        Contexts must be unique among reads in flight on this node.
        """
        if self.role is Role.LEADER:
            self._leader_read(ReadRequest(context, self.id))
        elif self.leader:
            self._awaiting_reads[context] = self._ticks + 2 * self.config.election_ticks
            self._send(MsgType.READ_INDEX, self.leader, context=context)
        else:
            self._read_states.append(ReadState(context, reason=FailReason.NO_LEADER))

    def transfer_leader(self, target: NodeId) -> None:
        """Hand leadership to `target` once its log is caught up (§3.10)."""
        if self.role is not Role.LEADER:
            if self.leader and self.leader != self.id:
                self._send(MsgType.TRANSFER_LEADER, self.leader, target=target)
            return
        if target == self.id or target not in self.progress or target == self._transferee:
            return
        self._transferee = target
        self._transfer_elapsed = 0
        if self.progress[target].match == self.log.last_index:
            self._send(MsgType.TIMEOUT_NOW, target)
        else:
            self._send_append(target, allow_empty=True)

    def compact(self, index: int, data: bytes, retain: int = 0) -> None:
        """Record a state-machine snapshot taken at applied `index`; drop the log before it
        but its last `retain` entries, which followers a little behind still get as entries."""
        meta = self.log.meta_at(index, self.config.voters)
        self.log.compact(Snapshot(meta, data), retain)

    def step(self, m: Message) -> None:
        """Feed one message from a peer.  Messages from unknown nodes are ignored."""
        if m.src not in self._members or m.dst != self.id or m.src == self.id:
            return
        t = m.type
        if t in _FORWARDING:
            self._step_forwarding(m)
            return
        if m.term > self.term:
            if t is MsgType.PRE_VOTE or t is MsgType.VOTE:
                in_lease = (
                    self.config.check_quorum
                    and self.leader != ""
                    and self._election_elapsed < self.config.election_ticks
                )
                if in_lease and not m.force:
                    return  # a live leader exists: don't let a returning node disrupt it
            if t is MsgType.PRE_VOTE or (t is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change anyone's term
            else:
                self._become_follower(m.term, m.src if t in _FROM_LEADER else "")
        elif m.term < self.term:
            if t is MsgType.APPEND or t is MsgType.HEARTBEAT:
                # Tell a stale leader about the newer term so it steps down (§9.6).
                self._answer(MsgType.APPEND_RESP, m.src, index=m.index, reject=True)
            elif t is MsgType.PRE_VOTE:
                self._send(MsgType.PRE_VOTE_RESP, m.src, reject=True)
            return
        if t is MsgType.PRE_VOTE or t is MsgType.VOTE:
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        log = self.log
        return bool(
            self._msgs
            or self._outcomes
            or self._read_states
            or self._forward
            or self._broadcast_due
            or self._reads_startable()
            or log.pending_snapshot
            or log.stable < log.last_index
            or log.applied < log.committed
            or self._hard_state() != self._prev_hard
            or self._soft_state() != self._prev_soft
            or (self.role is Role.LEADER and self._commit_lagging())
        )

    def ready(self) -> Ready:
        """Collect every pending effect.  Call `advance` with it before the next `ready`."""
        if self._ready_out:
            raise RuntimeError("ready() called again before advance()")
        self._flush_forwarded()
        if self.role is Role.LEADER:
            if self._broadcast_due:
                self._broadcast_append()
            self._flush_reads()
            self._flush_commit()
        rd = Ready()
        soft = self._soft_state()
        if soft != self._prev_soft:
            rd.soft_state = self._prev_soft = soft
        hard = self._hard_state()
        prev = self._prev_hard
        # A leader's messages never depend on what this Ready saves, except a new term or
        # vote, which only a node becoming candidate (or follower) produces.
        rd.send_first = self.role is Role.LEADER and (hard.term, hard.vote) == (prev.term, prev.vote)
        if hard != prev:
            rd.hard_state = self._prev_hard = hard
        log = self.log
        rd.snapshot = log.pending_snapshot
        rd.entries = log.unstable()
        rd.messages, self._msgs = self._msgs, []
        rd.committed = log.to_apply(_MAX_APPLY_BATCH)
        handed = rd.committed[-1].index if rd.committed else log.applied
        self._resolve_tracked(handed)
        rd.outcomes, self._outcomes = self._outcomes, []
        rd.read_states, self._read_states = self._read_states, []
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has carried out `rd`."""
        log = self.log
        if rd.snapshot is not None and log.pending_snapshot is rd.snapshot:
            log.pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            if log.term(last.index) == last.term and last.index > log.stable:
                log.stable = last.index
                if self.role is Role.LEADER and self._maybe_commit():
                    self._broadcast_due = True
        if rd.committed:
            log.applied = max(log.applied, rd.committed[-1].index)
        self._ready_out = False

    def status(self) -> dict[str, object]:
        """A read-only summary for operators (/raft/state) and tests."""
        return {
            "id": self.id,
            "role": self.role.name.lower(),
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "snapshot_index": self.log.snapshot.meta.index,
            "first_index": self.log.first_index,
            "last_index": self.log.last_index,
            "progress": {
                peer: {"match": pr.match, "next": pr.next, "state": pr.state.name.lower()}
                for peer, pr in self.progress.items()
            },
        }

    # ------------------------------------------------------------------ roles

    def _become_follower(self, term: int, leader: NodeId) -> None:
        if term > self.term:
            self.term = term
            self.vote = ""
            self._leader_match = self.log.committed
        self._leave_leadership()
        self.role = Role.FOLLOWER
        self.leader = leader
        self._reset_election_timer()

    def _become_pre_candidate(self) -> None:
        self._leave_leadership()
        self.role = Role.PRE_CANDIDATE
        self.leader = ""
        self._votes = {self.id: True}
        self._reset_election_timer()
        for peer in self.peers:
            self._send(
                MsgType.PRE_VOTE,
                peer,
                term=self.term + 1,
                index=self.log.last_index,
                log_term=self.log.last_term,
            )
        self._check_votes()

    def _become_candidate(self, force: bool) -> None:
        self._leave_leadership()
        self.term += 1
        self.vote = self.id
        self._leader_match = self.log.committed
        self.role = Role.CANDIDATE
        self.leader = ""
        self._votes = {self.id: True}
        self._reset_election_timer()
        for peer in self.peers:
            self._send(
                MsgType.VOTE,
                peer,
                index=self.log.last_index,
                log_term=self.log.last_term,
                force=force,
            )
        self._check_votes()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        nxt = self.log.last_index + 1
        self.progress = {peer: Progress(nxt) for peer in self.peers}
        # A no-op of our own term lets earlier entries commit through it (§5.4.2).
        self.log.append([Entry(self.term, nxt, b"", EntryKind.NOOP)])
        self._broadcast_due = True
        self._maybe_commit()

    def _leave_leadership(self) -> None:
        """Drop leader-only state; reads that were not confirmed fail."""
        if self.role is not Role.LEADER:
            return
        for req in self._read_only.drain() + self._reads_before_commit:
            self._fail_read(req, FailReason.LEADERSHIP_LOST)
        self._reads_before_commit = []
        self.progress = {}
        self._transferee = ""
        self._broadcast_due = False

    def _campaign(self, force: bool) -> None:
        if self.config.pre_vote and not force:
            self._become_pre_candidate()
        else:
            self._become_candidate(force)

    def _check_votes(self) -> None:
        granted = sum(self._votes.values())
        result = tally(granted, len(self._votes) - granted, len(self.config.voters))
        if result is True:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate(force=False)
            else:
                self._become_leader()
        elif result is False:
            self._become_follower(self.term, "")

    # ------------------------------------------------------------------ ticks

    def _tick_leader(self) -> None:
        cfg = self.config
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                active = 1 + sum(pr.recent_active for pr in self.progress.values())
                for pr in self.progress.values():
                    pr.recent_active = False
                if active < self.quorum:
                    self._become_follower(self.term, "")  # §6.2: cut off from a majority
                    return
        if self._transferee:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_ticks:
                self._transferee = ""  # the target did not catch up in time: give up
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= cfg.election_ticks:
                    pr.become_probe()  # the snapshot was lost or refused: try again
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            # Carry the newest unconfirmed read round, so a lost round is retried.
            pending = self._read_only.newest_round()
            context = pending.to_bytes(8, "big") if pending else b""
            for peer, pr in self.progress.items():
                self._send_heartbeat(peer, pr, context)

    def _expire_awaiting(self) -> None:
        """Fail what the leader never answered; insertion order is deadline order."""
        now = self._ticks
        proposals = self._awaiting_proposals
        while proposals:
            pid = next(iter(proposals))
            if proposals[pid] > now:
                break
            del proposals[pid]
            self._fail_proposal(pid, FailReason.TIMEOUT)
        reads = self._awaiting_reads
        while reads:
            context = next(iter(reads))
            if reads[context] > now:
                break
            del reads[context]
            self._read_states.append(ReadState(context, reason=FailReason.TIMEOUT))

    # ------------------------------------------------------------------ votes

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        can_vote = (
            self.vote == m.src
            or (self.vote == "" and self.leader == "")
            or (pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the campaign's term so the candidate counts it.
            self._send(resp, m.src, term=m.term)
            if not pre:
                self.vote = m.src
                self._election_elapsed = 0
        else:
            self._send(resp, m.src, reject=True)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            self._become_follower(m.term, m.src)
            self._step_follower(m)
            return
        want = MsgType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t is want and m.src not in self._votes:
            self._votes[m.src] = not m.reject
            self._check_votes()

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APPEND:
            self._heard_from_leader(m.src)
            self._handle_append(m)
        elif t is MsgType.HEARTBEAT:
            self._heard_from_leader(m.src)
            self.log.commit_to(min(m.commit, self._leader_match))
            if not m.commit_only:
                self._answer(MsgType.HEARTBEAT_RESP, m.src, context=m.context)
        elif t is MsgType.SNAPSHOT:
            self._heard_from_leader(m.src)
            self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW:
            self._campaign(force=True)

    def _heard_from_leader(self, leader: NodeId) -> None:
        self._election_elapsed = 0
        self.leader = leader

    def _handle_append(self, m: Message) -> None:
        log = self.log
        prev_index, prev_term, entries = m.index, m.log_term, m.entries
        if prev_index < log.committed:
            # Our committed prefix matches every leader's: keep only what lies beyond it.
            entries = [e for e in entries if e.index > log.committed]
            prev_index = log.committed
            prev_term = log.term(prev_index) or 0
        last = log.try_append(prev_index, prev_term, entries)
        if last is None:
            hint_index, hint_term = log.conflict_hint(m.index)
            self._answer(
                MsgType.APPEND_RESP,
                m.src,
                index=m.index,
                reject=True,
                conflict_index=hint_index,
                conflict_term=hint_term,
            )
            return
        self._leader_match = max(self._leader_match, last)
        log.commit_to(min(m.commit, last))
        self._answer(MsgType.APPEND_RESP, m.src, index=last)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        log = self.log
        if snap is None or snap.meta.index <= log.committed:
            self._answer(MsgType.APPEND_RESP, m.src, index=log.committed)
            return
        if log.matches(snap.meta.index, snap.meta.term):
            log.commit_to(snap.meta.index)  # we hold that entry: just move commit
        else:
            log.restore(snap)
        self._leader_match = max(self._leader_match, snap.meta.index)
        self._answer(MsgType.APPEND_RESP, m.src, index=snap.meta.index)

    # ------------------------------------------------------------------ leader

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        t = m.type
        restarted = pr.answered_from(m.incarnation)
        if t is MsgType.APPEND_RESP:
            pr.recent_active = True
            if m.reject:
                if pr.rejected(m.index, self._next_from_hint(m)) or restarted:
                    self._send_append(m.src, allow_empty=True)
                return
            if pr.acked(m.index):
                if pr.state is ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_replicate()
                if self._maybe_commit():
                    self._broadcast_due = True
                if m.src == self._transferee and pr.match == self.log.last_index:
                    self._send(MsgType.TIMEOUT_NOW, m.src)
            self._send_appends(m.src, pr)
        elif t is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            cfg = self.config
            stalled = pr.note_heartbeat_answer()
            full = pr.state is ProgressState.REPLICATE and pr.paused(cfg.max_inflight_msgs, cfg.max_inflight_bytes)
            # An append to a follower that is taking ours in and has room for more would
            # only draw another answer: new entries go out with the next Ready anyway.
            if pr.match < self.log.last_index and (stalled or full):
                if full:
                    # One more append than the window allows, at every answer: a full
                    # window may be waiting on appends that were lost (the follower's
                    # rejection puts us back on track), and with a small window this is
                    # half of a lagging follower's catch-up.
                    pr.release_one()
                self._send_append(m.src, allow_empty=True)
            if m.context:
                number = int.from_bytes(m.context, "big")
                for round_ in self._read_only.ack(number, m.src, self.quorum):
                    self._release(round_)

    def _next_from_hint(self, m: Message) -> int:
        if m.conflict_term:
            last = self.log.last_index_of_term(m.conflict_term, m.index)
            if last is not None:
                return last + 1
        return m.conflict_index or m.index

    def _append_own(self, pid: int, data: bytes) -> None:
        index = self.log.last_index + 1
        self.log.append([Entry(self.term, index, data)])
        heapq.heappush(self._tracked, (index, self.term, pid))
        self._broadcast_due = True
        if not self.peers:
            self._maybe_commit()

    def _maybe_commit(self) -> bool:
        log = self.log
        matches = [pr.match for pr in self.progress.values()]
        # Our own copy counts once saved (see Ready.send_first); alone in the cluster, once
        # handed out: the same Ready saves it before it applies anything.
        matches.append(log.stable if self.peers else log.last_index)
        index = committed_index(matches, len(self.config.voters))
        # Only entries of the current term are committed by counting replicas (§5.4.2).
        if index > log.committed and log.term(index) == self.term:
            log.commit_to(index)
            if self._reads_before_commit:
                self._read_only.batch.extend(self._reads_before_commit)
                self._reads_before_commit = []
            return True
        return False

    def _broadcast_append(self) -> None:
        self._broadcast_due = False
        for peer, pr in self.progress.items():
            self._send_appends(peer, pr)

    def _send_appends(self, peer: NodeId, pr: Progress) -> None:
        """Fill the follower's pipeline: several AppendEntries while the window allows."""
        while self._send_append(peer, allow_empty=False):
            if pr.state is not ProgressState.REPLICATE:
                break

    def _send_append(self, peer: NodeId, allow_empty: bool) -> bool:
        """Send one AppendEntries (or a snapshot); True if it carried entries."""
        pr = self.progress[peer]
        cfg = self.config
        if pr.paused(cfg.max_inflight_msgs, cfg.max_inflight_bytes):
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            pr.become_snapshot(log.snapshot.meta.index)
            self._send(MsgType.SNAPSHOT, peer, snapshot=log.snapshot)
            return False
        if pr.next <= log.last_index:
            entries, size = log.slice(pr.next, cfg.max_entries_per_msg, cfg.max_bytes_per_msg)
        elif allow_empty:
            entries, size = [], 0
        else:
            return False
        self._send(
            MsgType.APPEND,
            peer,
            index=prev,
            log_term=prev_term,
            entries=entries,
            commit=log.committed,
        )
        pr.sent_commit = log.committed
        if entries:
            pr.sent(entries[-1].index, size)
            return True
        if pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return False

    def _send_heartbeat(self, peer: NodeId, pr: Progress, context: bytes, commit_only: bool = False) -> None:
        # Never tell a follower to commit past what it is known to hold.
        commit = min(pr.match, self.log.committed)
        self._send(MsgType.HEARTBEAT, peer, commit=commit, context=context, commit_only=commit_only)
        pr.sent_commit = max(pr.sent_commit, commit)

    def _commit_lagging(self) -> bool:
        committed = self.log.committed
        return any(min(pr.match, committed) > pr.sent_commit for pr in self.progress.values())

    def _flush_commit(self) -> None:
        """Tell followers about a new commit index when no append carried it."""
        committed = self.log.committed
        for peer, pr in self.progress.items():
            if min(pr.match, committed) > pr.sent_commit:
                # Unanswered: one write per commit instead of two, and the follower's
                # answer would tell nothing its latest append response did not.
                self._send_heartbeat(peer, pr, b"", commit_only=True)

    # ------------------------------------------------------------------ reads

    def _leader_read(self, req: ReadRequest) -> None:
        if self._transferee:
            self._fail_read(req, FailReason.NOT_LEADER)
        elif self.log.term(self.log.committed) != self.term:
            # Until it commits in its own term a new leader does not know the commit index.
            self._reads_before_commit.append(req)
        else:
            self._read_only.batch.append(req)

    def _reads_startable(self) -> bool:
        """Reads wait for a round, and only one round is out at a time: those arriving while
        it is out share the next one, so a steady stream of reads costs one heartbeat round
        per round trip, not one per Ready.  A lost round is retried by the next periodic
        heartbeat, which carries the newest unconfirmed round."""
        read_only = self._read_only
        return bool(read_only.batch) and not read_only.newest_round()

    def _flush_reads(self) -> None:
        if not self._reads_startable():
            return
        round_ = self._read_only.start_round(self.log.committed, self.id)
        if self.quorum == 1:
            for done in self._read_only.ack(round_.number, self.id, 1):
                self._release(done)
            return
        context = round_.number.to_bytes(8, "big")
        for peer, pr in self.progress.items():
            self._send_heartbeat(peer, pr, context)

    def _release(self, round_: ReadRound) -> None:
        for req in round_.requests:
            if req.origin == self.id:
                self._read_states.append(ReadState(req.context, round_.index))
            else:
                self._send(MsgType.READ_INDEX_RESP, req.origin, context=req.context, index=round_.index)

    def _fail_read(self, req: ReadRequest, reason: FailReason) -> None:
        if req.origin == self.id:
            self._read_states.append(ReadState(req.context, reason=reason))
        else:
            self._send(MsgType.READ_INDEX_RESP, req.origin, context=req.context, reject=True)

    # ------------------------------------------------------------------ forwarding

    def _step_forwarding(self, m: Message) -> None:
        t = m.type
        if t is MsgType.PROPOSE:
            if self.role is not Role.LEADER or self._transferee:
                self._send(MsgType.PROPOSE_RESP, m.src, reject=True, proposal_ids=m.proposal_ids)
                return
            first = self.log.last_index + 1
            term = self.term
            self.log.append([Entry(term, first + n, e.data) for n, e in enumerate(m.entries)])
            self._broadcast_due = True
            self._send(
                MsgType.PROPOSE_RESP,
                m.src,
                index=first,
                log_term=term,
                proposal_ids=m.proposal_ids,
            )
        elif t is MsgType.PROPOSE_RESP:
            for n, pid in enumerate(m.proposal_ids):
                if self._awaiting_proposals.pop(pid, None) is None:
                    continue  # already timed out, or a duplicate answer
                if m.reject:
                    self._fail_proposal(pid, FailReason.NOT_LEADER)
                else:
                    heapq.heappush(self._tracked, (m.index + n, m.log_term, pid))
        elif t is MsgType.READ_INDEX:
            req = ReadRequest(m.context, m.src)
            if self.role is Role.LEADER:
                self._leader_read(req)
            else:
                self._fail_read(req, FailReason.NOT_LEADER)
        elif t is MsgType.READ_INDEX_RESP:
            if self._awaiting_reads.pop(m.context, None) is None:
                return
            if m.reject:
                self._read_states.append(ReadState(m.context, reason=FailReason.NOT_LEADER))
            else:
                self._read_states.append(ReadState(m.context, m.index))
        elif t is MsgType.TRANSFER_LEADER:
            if self.role is Role.LEADER:
                self.transfer_leader(m.target)

    def _flush_forwarded(self) -> None:
        if not self._forward:
            return
        batch, self._forward = self._forward, []
        if self.role is Role.LEADER:
            for pid, data in batch:
                self._append_own(pid, data)
            return
        if not self.leader:
            for pid, _ in batch:
                self._fail_proposal(pid, FailReason.NO_LEADER)
            return
        deadline = self._ticks + 2 * self.config.election_ticks
        for pid, _ in batch:
            self._awaiting_proposals[pid] = deadline
        self._send(
            MsgType.PROPOSE,
            self.leader,
            entries=[Entry(0, 0, data) for _, data in batch],
            proposal_ids=[pid for pid, _ in batch],
        )

    def _fail_proposal(self, pid: int, reason: FailReason) -> None:
        self._outcomes.append(ProposalOutcome(pid, reason=reason))

    def _resolve_tracked(self, applied_upto: int) -> None:
        tracked = self._tracked
        top_term = self.log.term(applied_upto) or 0
        if tracked and top_term > self._resolved_term:
            # An entry of an older term above a committed entry of a newer term can never
            # commit: a log holding it would break Log Matching at `applied_upto`.
            self._resolved_term = top_term
            keep = []
            for item in tracked:
                if item[1] < top_term and item[0] > applied_upto:
                    self._fail_proposal(item[2], FailReason.SUPERSEDED)
                else:
                    keep.append(item)
            heapq.heapify(keep)
            self._tracked = tracked = keep
        while tracked and tracked[0][0] <= applied_upto:
            index, term, pid = heapq.heappop(tracked)
            actual = self.log.term(index)
            if actual == term:
                self._outcomes.append(ProposalOutcome(pid, index))
            elif actual is None:
                # Covered by a snapshot from the leader: whether it made it is unknown here.
                self._fail_proposal(pid, FailReason.TIMEOUT)
            else:
                self._fail_proposal(pid, FailReason.SUPERSEDED)

    # ------------------------------------------------------------------ helpers

    def _send(self, type_: MsgType, to: NodeId, term: int | None = None, **fields: object) -> None:
        self._msgs.append(
            Message(type_, self.id, to, self.term if term is None else term, **fields)  # type: ignore[arg-type]
        )

    def _answer(self, type_: MsgType, leader: NodeId, **fields: object) -> None:
        """An answer to a leader, which carries this process's incarnation."""
        fields["incarnation"] = self.config.incarnation
        self._send(type_, leader, None, **fields)

    def _random_timeout(self) -> int:
        n = self.config.election_ticks
        return self._rng.randrange(n, 2 * n)

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)
