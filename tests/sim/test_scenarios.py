"""The classic traps of Raft, each replayed step by step on the simulator.

Every scenario runs under the simulator's checkers (election safety, log matching,
leader completeness, state machine safety, acknowledged-means-applied, fresh reads),
so a core that falls into a trap fails here with the property it broke.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.raft import EntryKind, FailReason, Message, MsgType, Role
from server.raft.progress import ProgressState
from tests.sim.cluster import Simulation

ELECTION = 10  # election_ticks used by every scenario


def test_figure8_an_old_term_entry_on_a_majority_is_not_committed_by_counting() -> None:
    """Raft paper, Figure 8: a leader may not commit an entry of an earlier term by
    counting replicas; if it did, a later leader could overwrite a committed entry."""
    sim = Simulation(seed=8, nodes=5, max_entries_per_msg=1)
    a = sim.wait_for_leader()
    b, c, d, e = (n for n in sim.ids if n != a)
    # (a) A replicates entry X of its term to B only, then crashes.
    sim.partition([a, b], [c], [d], [e])
    x = sim.propose(a)
    sim.wait_for(lambda: _holds(sim, b, x), 5, "X on B")
    x_index = sim.core(a).log.last_index
    x_term = sim.core(a).term
    sim.crash(a)
    # (b) E is elected by C, D (and itself) in a newer term; its entries reach nobody.
    sim.intercept = lambda m: None if m.src == e and m.entries else m
    sim.partition([c, d, e], [b])
    sim.wait_for_leader(among=[c, d, e])
    if sim.leader() != e:  # whoever won, hand the office to E
        sim.transfer(sim.leader() or c, e)
    sim.wait_for(lambda: sim.leader() == e, 100, "E leading")
    sim.propose(e)
    assert sim.core(e).log.term(x_index) != x_term  # E holds a newer entry at X's index
    sim.crash(e)
    # (c) A restarts and is elected by C and D; X reaches C and D, but A's own no-op
    # (the entry after X) never does: X sits on a majority (A, B, C, D) yet is of an
    # older term, so it must stay uncommitted.
    sim.start(a)
    sim.intercept = lambda m: _without_entries_after(m, x_index) if m.src == a else m
    sim.partition([a, c, d], [b])
    sim.wait_for_leader(among=[a])
    sim.wait_for(lambda: _holds(sim, c, x) and _holds(sim, d, x), 20, "X on C and D")
    sim.run_ticks(3)
    assert sim.core(a).log.committed < x_index, "X was committed by counting replicas"
    # (d) A crashes; E comes back and, with the newer last term, wins C and D and
    # overwrites X.  That is safe only because X was never committed.
    sim.crash(a)
    sim.intercept = lambda m: m
    sim.start(e)
    sim.partition([e, c, d], [b])
    sim.wait_for_leader(among=[e])
    sim.heal()
    sim.start(a)
    sim.wait_for(lambda: all(sim.nodes[n].applied >= x_index for n in sim.ids), 200, "all apply")
    assert x not in sim.applied_payloads


def test_prevote_a_partitioned_node_rejoining_does_not_disrupt_the_leader() -> None:
    """Thesis §9.6: without PreVote an isolated node inflates its term and, on return,
    deposes a healthy leader; with PreVote its term stays put and the leader stays."""
    for pre_vote, disrupted in ((True, False), (False, True)):
        sim = Simulation(seed=96, nodes=3, pre_vote=pre_vote)
        lead = sim.wait_for_leader()
        term = sim.core(lead).term
        lonely = next(n for n in sim.ids if n != lead)
        sim.partition([n for n in sim.ids if n != lonely], [lonely])
        sim.run_ticks(10 * ELECTION)
        assert (sim.core(lonely).term > term) is disrupted
        sim.heal()
        sim.run_ticks(5 * ELECTION)
        new_lead = sim.wait_for_leader()
        assert (sim.core(new_lead).term != term) is disrupted, f"pre_vote={pre_vote}"
        if not disrupted:
            assert new_lead == lead
            assert sim.core(lonely).leader == lead


def test_leader_isolated_in_a_minority_steps_down_and_never_acknowledges_its_writes() -> None:
    """Thesis §6.2 (CheckQuorum) and §5.4: writes a leader could not replicate to a
    majority are never acknowledged, and they vanish once a new leader commits."""
    sim = Simulation(seed=62, nodes=5)
    old = sim.wait_for_leader()
    buddy = next(n for n in sim.ids if n != old)
    majority = [n for n in sim.ids if n not in (old, buddy)]
    sim.partition([old, buddy], majority)
    writes = [sim.propose(old) for _ in range(5)]
    sim.wait_for(lambda: sim.core(old).role is not Role.LEADER, 2 * ELECTION, "old leader steps down")
    new = sim.wait_for_leader(among=majority)
    committed = sim.propose(new)
    sim.wait_for(lambda: committed in sim.acked, 50, "a write on the majority side")
    sim.heal()
    sim.wait_for(lambda: not sim.nodes[old].proposals, 100, "outcomes of the old leader's writes")
    assert not any(w in sim.acked for w in writes)
    assert all(w in sim.failed for w in writes)  # SUPERSEDED: a definite, retryable failure
    assert not any(w in sim.applied_payloads for w in writes)


def test_a_deposed_leader_does_not_serve_a_readindex_read() -> None:
    """Thesis §6.4: a leader must confirm it still leads before answering a read; an
    old leader cut off from the majority cannot, so it never answers from stale state.
    CheckQuorum is off here so the old leader keeps believing it leads."""
    sim = Simulation(seed=64, nodes=3, check_quorum=False)
    old = sim.wait_for_leader()
    first = sim.propose(old)
    sim.wait_for(lambda: first in sim.acked, 20, "a write under the old leader")
    others = [n for n in sim.ids if n != old]
    sim.partition([old], others)
    new = sim.wait_for_leader(among=others)
    write = sim.propose(new)
    sim.wait_for(lambda: write in sim.acked, 50, "a write under the new leader")
    assert sim.core(old).role is Role.LEADER  # it does not know yet
    context = sim.read(old)
    sim.run_ticks(5 * ELECTION)
    assert context in sim.nodes[old].reads, "the deposed leader answered a read"
    sim.heal()
    sim.wait_for(lambda: context not in sim.nodes[old].reads, 50, "the read to fail")
    assert sim.read_answers == 0


def test_transfer_to_a_lagging_follower_waits_until_it_has_caught_up() -> None:
    """Thesis §3.10: TimeoutNow goes out only once the target's log matches the
    leader's, so the new leader never lacks an entry the old one had."""
    sim = Simulation(seed=310, nodes=3)
    lead = sim.wait_for_leader()
    target = next(n for n in sim.ids if n != lead)
    timeout_now: list[Message] = []
    lagging = True

    def observe(m: Message) -> Message | None:
        if m.type is MsgType.TIMEOUT_NOW:
            timeout_now.append(m)
            assert not lagging, "TimeoutNow sent to a follower that lags"
        return None if lagging and m.dst == target and m.type is MsgType.APPEND else m

    sim.intercept = observe
    writes = [sim.propose(lead) for _ in range(10)]
    sim.wait_for(lambda: all(w in sim.acked for w in writes), 30, "writes on the other follower")
    sim.transfer(lead, target)
    refused = sim.propose(lead)  # no new writes while leadership is being handed over
    sim.run_ticks(3)
    assert not timeout_now
    assert refused in sim.failed
    lagging = False
    new = sim.wait_for_leader(among=[target], max_ticks=30)
    assert len(timeout_now) == 1
    assert all(sim.core(new).log.term(sim.acked[w]) is not None for w in writes)


@pytest.mark.parametrize("retain", [0, 10, 50], ids=["no catch-up entries", "too few", "enough"])
def test_a_follower_behind_a_compacted_log_gets_the_snapshot_unless_the_leader_kept_its_entries(retain: int) -> None:
    sim = Simulation(seed=51, nodes=3)
    lead = sim.wait_for_leader()
    behind = next(n for n in sim.ids if n != lead)
    sim.crash(behind)
    writes = [sim.propose(lead) for _ in range(30)]
    sim.wait_for(lambda: all(w in sim.acked for w in writes), 50, "writes")
    sim.compact(lead, retain)
    log = sim.core(lead).log
    assert log.snapshot.meta.index > 30 and log.first_index == max(1, log.snapshot.meta.index - retain + 1)
    sim.start(behind)
    snapshots: list[Message] = []

    def observe(m: Message) -> Message:
        if m.type is MsgType.SNAPSHOT:
            snapshots.append(m)
        return m

    sim.intercept = observe
    target = sim.core(lead).log.committed
    sim.wait_for(lambda: sim.nodes[behind].applied >= target, 50, "the follower to catch up")
    needs_snapshot = retain < 30
    assert bool(snapshots) == needs_snapshot
    assert (sim.core(behind).log.first_index > 2) == needs_snapshot


def test_a_leader_sends_before_saving_and_counts_its_own_copy_only_once_saved() -> None:
    """Thesis §10.2.1: a leader's appends may travel while it writes them, so long as a
    quorum counts its own copy only once saved."""
    sim = Simulation(seed=7, nodes=3)
    lead = sim.wait_for_leader()
    core = sim.core(lead)
    sim.wait_for(lambda: core.log.committed == core.log.last_index, 20, "the leader's no-op committed")
    follower = next(n for n in sim.ids if n != lead)
    core.propose(b"x")
    index = core.log.last_index
    rd = core.ready()
    assert rd.send_first and [e.index for e in rd.entries] == [index]
    assert any(m.type is MsgType.APPEND and m.entries for m in rd.messages)
    # One follower saved it, the leader not yet: one copy of three is no quorum.
    core.step(Message(MsgType.APPEND_RESP, follower, lead, core.term, index=index))
    assert core.log.committed < index
    core.advance(rd)  # the leader's own save is done: two copies of three
    assert core.log.committed == index


def test_a_candidate_saves_its_term_and_vote_before_asking_for_votes() -> None:
    sim = Simulation(seed=8, nodes=3)
    core = sim.core("n1")
    while core.role is not Role.CANDIDATE:
        core.tick()
        rd = core.ready()
        assert not rd.send_first, "a follower or candidate sent before saving"
        for m in rd.messages:
            if m.type is MsgType.PRE_VOTE:
                core.step(Message(MsgType.PRE_VOTE_RESP, m.dst, "n1", m.term))
        core.advance(rd)
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "n1" and not rd.send_first


def test_reads_asked_while_a_round_is_out_share_the_next_round() -> None:
    """One ReadIndex round at a time: reads that arrive while it is out wait and share the
    next round, so a stream of reads costs a round per round trip, not one per read."""
    sim = Simulation(seed=5, nodes=3)
    lead = sim.wait_for_leader()
    write = sim.propose(lead)
    sim.wait_for(lambda: write in sim.acked, 20, "a write in the leader's term")
    rounds: set[bytes] = set()

    def count_rounds(m: Message) -> Message:
        if m.type is MsgType.HEARTBEAT and m.context:
            rounds.add(m.context)
        return m

    sim.intercept = count_rounds
    first = sim.read(lead)
    assert len(rounds) == 1
    later = [sim.read(lead) for _ in range(5)]
    assert len(rounds) == 1, "a read started a round while one was out"
    sim.wait_for(lambda: sim.read_answers == 6, 20, "every read answered")
    assert len(rounds) == 2
    assert first not in sim.nodes[lead].reads and not set(later) & set(sim.nodes[lead].reads)


def test_a_single_node_cluster_commits_and_reads_alone() -> None:
    sim = Simulation(seed=1, nodes=1)
    lead = sim.wait_for_leader()
    write = sim.propose(lead)
    sim.read(lead)
    sim.wait_for(lambda: write in sim.acked and sim.read_answers == 1, 5, "write and read")


def test_a_new_leader_appends_a_noop_of_its_own_term() -> None:
    sim = Simulation(seed=2, nodes=3)
    lead = sim.wait_for_leader()
    entry = sim.core(lead).log.entries[-1]
    assert entry.kind is EntryKind.NOOP and entry.term == sim.core(lead).term


def test_a_proposal_without_a_known_leader_fails_at_once_as_never_committed() -> None:
    sim = Simulation(seed=3, nodes=3)
    payload = sim.propose("n1")  # nobody has been elected yet
    assert payload in sim.failed
    assert FailReason.NO_LEADER  # the reason is definite: never entered any log


def _without_entries_after(m: Message, index: int) -> Message:
    if not any(e.index > index for e in m.entries):
        return m
    return replace(m, entries=[e for e in m.entries if e.index <= index])


def _holds(sim: Simulation, nid: str, payload: bytes) -> bool:
    core = sim.nodes[nid].core
    return core is not None and any(e.data == payload for e in core.log.entries)


class _LeaderAndFollower:
    """A leader's core driven by hand, with one follower caught up and in REPLICATE."""

    def __init__(self, sim: Simulation) -> None:
        self.lead = sim.wait_for_leader()
        self.core = sim.core(self.lead)
        self.follower = next(n for n in sim.ids if n != self.lead)
        progress = self.core.progress[self.follower]
        sim.wait_for(
            lambda: progress.state is ProgressState.REPLICATE and progress.match == self.core.log.last_index,
            20,
            "the follower caught up and in REPLICATE",
        )
        while self.core.has_ready():
            self.appends_out()

    def appends_out(self) -> list[Message]:
        """Carry out the next Ready; the appends it sends the follower."""
        rd = self.core.ready()
        self.core.advance(rd)
        return [m for m in rd.messages if m.type is MsgType.APPEND and m.dst == self.follower]

    def answer(self, type_: MsgType, index: int = 0, **fields: object) -> None:
        self.core.step(Message(type_, self.follower, self.lead, self.core.term, index=index, **fields))  # type: ignore[arg-type]


def test_a_heartbeat_answer_draws_an_empty_append_only_from_a_stalled_follower_with_room_in_its_window() -> None:
    """Under load, heartbeat answers come while appends are out; an empty append for each
    would only draw a second answer.  A follower whose match has not moved since its
    previous heartbeat answer may have lost an append: that one gets an empty append,
    which its rejection turns into a resend."""
    pair = _LeaderAndFollower(Simulation(seed=9, nodes=3))
    pair.core.propose(b"x")
    assert [len(m.entries) for m in pair.appends_out()] == [1]
    x = pair.core.log.last_index
    pair.core.propose(b"y")
    assert [len(m.entries) for m in pair.appends_out()] == [1]
    y = pair.core.log.last_index
    pair.answer(MsgType.APPEND_RESP, x)
    pair.answer(MsgType.HEARTBEAT_RESP)
    assert pair.appends_out() == [], "an empty append to a follower whose match just moved"
    pair.answer(MsgType.HEARTBEAT_RESP)  # nothing acknowledged since the previous answer
    (probe,) = pair.appends_out()
    assert (probe.index, probe.entries) == (y, [])


def test_a_heartbeat_answer_still_sends_entries_to_a_follower_with_a_full_window() -> None:
    """A follower whose window is full while entries wait for it gets one more append at
    every heartbeat answer, stalled or not: with a window of one, that is half its
    catch-up."""
    pair = _LeaderAndFollower(Simulation(seed=13, nodes=3, max_inflight_msgs=1, max_entries_per_msg=1))
    pair.answer(MsgType.HEARTBEAT_RESP)
    pair.appends_out()
    for _ in range(3):
        pair.core.propose(b"x")
    (first,) = pair.appends_out()  # the window holds one append; two entries wait
    pair.answer(MsgType.APPEND_RESP, first.entries[-1].index)
    assert [len(m.entries) for m in pair.appends_out()] == [1]  # the freed slot, filled at once
    pair.answer(MsgType.HEARTBEAT_RESP)  # match moved since the previous answer: not stalled
    (more,) = pair.appends_out()
    assert more.entries and more.entries[-1].index == pair.core.log.last_index


@pytest.mark.parametrize("reading", [False, True], ids=["idle", "reads running"])
def test_a_follower_that_lost_the_last_append_gets_it_within_a_few_heartbeats(reading: bool) -> None:
    """Nothing follows the lost append to expose the gap: the heartbeat answers must,
    also while read rounds keep heartbeats (and their answers) coming every turn."""
    sim = Simulation(seed=11, nodes=3)
    lead = sim.wait_for_leader()
    follower = next(n for n in sim.ids if n != lead)
    first = sim.propose(lead)
    sim.wait_for(lambda: _holds(sim, follower, first), 20, "the first write on the follower")
    target = sim.core(lead).log.last_index + 1
    dropped: list[Message] = []

    def drop_the_append(m: Message) -> Message | None:
        if m.dst == follower and any(e.index == target for e in m.entries):
            dropped.append(m)
            return None
        return m

    sim.intercept = drop_the_append
    lost = sim.propose(lead)
    sim.intercept = lambda m: m
    assert len(dropped) == 1, "the append was sent once, and lost"
    for _ in range(8):
        if reading:
            sim.read(lead)
        sim.run_ticks(1)
        if _holds(sim, follower, lost):
            return
    raise AssertionError("the follower never got the lost append")


def test_a_follower_whose_window_filled_by_bytes_is_caught_up_after_its_appends_were_lost() -> None:
    """A window full by bytes with fewer appends than its count allows must still let one
    more append go at a heartbeat answer, or a follower whose appends were lost is never
    sent another."""
    sim = Simulation(seed=14, nodes=3, max_entries_per_msg=1, max_inflight_msgs=64, max_inflight_bytes=600)
    lead = sim.wait_for_leader()
    follower = next(n for n in sim.ids if n != lead)
    sim.wait_for(lambda: sim.core(lead).progress[follower].match == sim.core(lead).log.last_index, 20, "caught up")
    sim.partition([lead, *(n for n in sim.ids if n != follower)], [follower])
    writes = [sim.propose(lead, size=200) for _ in range(5)]
    sim.run_ticks(3)
    sim.heal()
    sim.wait_for(lambda: all(_holds(sim, follower, w) for w in writes), 100, "the follower holding every write")


@pytest.mark.parametrize("writes_after", [False, True], ids=["idle", "writes after"])
def test_a_follower_back_without_entries_it_acknowledged_is_caught_up_by_the_same_leader(writes_after: bool) -> None:
    """With appendfsync everysec a machine crash can take back the last writes a follower
    acknowledged.  The leader's match for it is then too high: appends after that match
    are refused, and refusals at or below it look stale.  The follower's new incarnation
    tells the leader to find its match again."""
    sim = Simulation(seed=21, nodes=3)
    lead = sim.wait_for_leader()
    term = sim.core(lead).term
    follower = next(n for n in sim.ids if n != lead)
    writes = [sim.propose(lead) for _ in range(2)]
    sim.wait_for(lambda: all(_holds(sim, follower, w) for w in writes), 30, "the first writes on the follower")
    image = sim.disk_image(follower)
    writes += [sim.propose(lead) for _ in range(4)]
    sim.wait_for(lambda: all(_holds(sim, follower, w) for w in writes), 30, "every write on the follower")
    sim.crash(follower)
    sim.rewind(follower, image)
    sim.start(follower)
    assert not any(_holds(sim, follower, w) for w in writes[2:])
    if writes_after:
        writes.append(sim.propose(lead))
    sim.wait_for(lambda: all(_holds(sim, follower, w) for w in writes), 20, "the follower holding every write again")
    assert (sim.leader(), sim.core(lead).term) == (lead, term), "the same leader caught it up"


@pytest.mark.parametrize("kept_term", [False, True], ids=["new term lost too", "new term kept"])
def test_a_follower_back_with_entries_it_had_overwritten_does_not_commit_them_on_a_heartbeat(kept_term: bool) -> None:
    """A lost write can be a truncation: the follower comes back holding an old leader's
    uncommitted entries where the new leader counted its own.  The new leader's first
    heartbeat, sent before it learns of the restart, tells a commit index past them; the
    follower must commit only what it has matched with this leader since it started,
    whether or not it still knows the new term (the simulator's state machine safety
    check fails otherwise)."""
    sim = Simulation(seed=23, nodes=5)
    old = sim.wait_for_leader()
    follower = next(n for n in sim.ids if n != old)
    others = [n for n in sim.ids if n not in (old, follower)]
    progress = sim.core(old).progress.values()
    sim.wait_for(lambda: all(pr.match == sim.core(old).log.last_index for pr in progress), 30, "everyone caught up")
    # The old leader's next entries reach the follower alone: two of five never commit.
    sim.partition([old, follower], others)
    doomed = [sim.propose(old) for _ in range(3)]
    sim.wait_for(lambda: all(_holds(sim, follower, d) for d in doomed), 20, "the doomed entries on the follower")
    image = sim.disk_image(follower)
    sim.crash(old)
    sim.partition([follower], others)
    new = sim.wait_for_leader(among=others)
    writes = [sim.propose(new) for _ in range(3)]
    sim.heal()
    counted = sim.core(new).progress[follower]
    sim.wait_for(lambda: counted.match == sim.core(new).log.last_index, 50, "the new leader counting the follower")
    assert all(_holds(sim, follower, w) for w in writes) and not any(_holds(sim, follower, d) for d in doomed)
    if kept_term:  # saved before the appends that truncated the doomed entries
        image.hard = replace(image.hard, term=sim.core(new).term, vote="")
    sim.crash(follower)
    sim.rewind(follower, image)
    sim.start(follower)
    assert all(_holds(sim, follower, d) for d in doomed)
    sim.wait_for(lambda: all(_holds(sim, follower, w) for w in writes), 30, "the new leader's writes on it again")
    assert sim.leader() == new
    assert not any(d in sim.applied_payloads for d in doomed)


def _pipelined_pair(seed: int, appends: int) -> tuple[_LeaderAndFollower, int]:
    """A leader with `appends` one-entry appends out to its follower; the leader's last index."""
    pair = _LeaderAndFollower(Simulation(seed=seed, nodes=3))
    for _ in range(appends):
        pair.core.propose(b"x")
        pair.appends_out()
    return pair, pair.core.log.last_index


def test_an_answer_from_a_new_incarnation_restarts_the_search_for_the_followers_match() -> None:
    pair, last = _pipelined_pair(seed=22, appends=3)
    pair.answer(MsgType.APPEND_RESP, last)
    pr = pair.core.progress[pair.follower]
    life = pr.incarnation
    assert life and pr.match == last
    pair.answer(MsgType.HEARTBEAT_RESP, incarnation=0)  # no incarnation (an older node): nothing changes
    pair.answer(MsgType.HEARTBEAT_RESP, incarnation=life)
    assert (pr.state, pr.match, pair.appends_out()) == (ProgressState.REPLICATE, last, [])
    pair.answer(MsgType.HEARTBEAT_RESP, incarnation=life + 1)
    (probe,) = pair.appends_out()
    assert (pr.state, pr.match, pr.incarnation) == (ProgressState.PROBE, 0, life + 1)
    assert probe.index == last, "the probe starts where the leader's appends had got to"
    # A late ack from the previous life counts as one more restart, and was true when sent;
    # the new life's next answer starts over again, and its ack ends the search.
    pair.answer(MsgType.APPEND_RESP, last - 1, incarnation=life)
    assert (pr.state, pr.match, pr.incarnation) == (ProgressState.REPLICATE, last - 1, life)
    pair.answer(MsgType.APPEND_RESP, last, incarnation=life + 1)
    assert (pr.state, pr.match, pr.incarnation) == (ProgressState.REPLICATE, last, life + 1)


def test_a_new_incarnation_refusing_an_older_append_draws_a_probe_at_once() -> None:
    """Its refusal of an append behind the latest one is not what PROBE waits for; the
    restart alone is reason enough to probe, rather than wait for a heartbeat answer."""
    pair, last = _pipelined_pair(seed=24, appends=3)
    life = pair.core.progress[pair.follower].incarnation
    pair.answer(MsgType.APPEND_RESP, last - 2, incarnation=life + 1, reject=True, conflict_index=last - 3)
    (probe,) = pair.appends_out()
    assert probe.index == last
