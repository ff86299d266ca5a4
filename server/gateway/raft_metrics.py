"""Raft, peer-link and Redis metrics, read from the replica and transport at scrape time.

Labels stay bounded: `role` and `reason` take a handful of values, `peer` one per
configured member.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.gateway.families import histogram_family, snake
from server.gateway.views import PeerLinkView, ReceiveView, ReplicaView


class RaftCollector(Collector):
    """`peer_links`: peer -> its link's stats; `last_contact`: peer -> time.monotonic()
    of its latest message to this node."""

    def __init__(
        self,
        replica: ReplicaView,
        peer_links: Callable[[], Mapping[str, PeerLinkView]],
        received: ReceiveView,
        last_contact: Callable[[], Mapping[str, float]],
    ) -> None:
        self._replica = replica
        self._peer_links = peer_links
        self._received = received
        self._last_contact = last_contact

    def collect(self) -> Iterator[Metric]:
        yield from self._state()
        yield from self._work()
        yield from self._peers()

    def _state(self) -> Iterator[Metric]:
        replica = self._replica
        yield GaugeMetricFamily("dsync_raft_term", "Current Raft term.", value=replica.term)
        role = GaugeMetricFamily(
            "dsync_raft_role", "1 for this node's current Raft role, 0 for the others.", labels=["role"]
        )
        for member in type(replica.role):
            role.add_metric([member.name.lower()], float(member is replica.role))
        yield role
        yield GaugeMetricFamily(
            "dsync_raft_has_leader", "1 while this node knows a leader, else 0.", value=float(bool(replica.leader_id))
        )
        yield CounterMetricFamily(
            "dsync_raft_leader_changes_total",
            "Times this node learned of a leader other than the last one it knew.",
            value=replica.stats.leader_changes,
        )
        yield GaugeMetricFamily(
            "dsync_raft_commit_index", "Highest log index known committed.", value=replica.commit_index
        )
        yield GaugeMetricFamily(
            "dsync_raft_applied_index", "Highest log index applied to the state machines.", value=replica.applied_index
        )

    def _work(self) -> Iterator[Metric]:
        stats = self._replica.stats
        yield CounterMetricFamily(
            "dsync_raft_proposals_committed_total",
            "Proposals made on this node that committed and were applied.",
            value=stats.proposals_committed,
        )
        failed = CounterMetricFamily(
            "dsync_raft_proposals_failed_total",
            "Proposals made on this node that failed, by reason (the replica error).",
            labels=["reason"],
        )
        for reason, count in sorted(stats.proposals_failed.items()):
            failed.add_metric([snake(reason)], count)
        yield failed
        yield CounterMetricFamily(
            "dsync_raft_reads_total", "Linearizable read barriers confirmed on this node.", value=stats.reads_served
        )
        read_failed = CounterMetricFamily(
            "dsync_raft_reads_failed_total", "Read barriers that failed, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.reads_failed.items()):
            read_failed.add_metric([snake(reason)], count)
        yield read_failed
        yield CounterMetricFamily(
            "dsync_raft_entries_applied_total",
            "Log entries applied to the state machines.",
            value=stats.entries_applied,
        )
        yield CounterMetricFamily(
            "dsync_raft_snapshots_total",
            "State-machine snapshots this node took, each followed by compacting its log.",
            value=stats.snapshots,
        )
        yield CounterMetricFamily(
            "dsync_raft_snapshot_seconds",
            "Time spent taking and saving snapshots and compacting the log (Raft waits for it all).",
            value=stats.snapshot_seconds,
        )
        yield CounterMetricFamily(
            "dsync_raft_snapshots_installed_total",
            "Snapshots received from a leader because this node was too far behind for its log.",
            value=stats.snapshots_installed,
        )
        yield CounterMetricFamily(
            "dsync_raft_snapshots_sent_total",
            "Snapshots this node sent as leader to followers behind the start of its log.",
            value=stats.snapshots_sent,
        )
        yield histogram_family(
            "dsync_raft_append_seconds",
            "Time to append one batch of entries to this node's log durably (one Redis MULTI/EXEC).",
            [],
            [((), stats.append_latency)],
        )
        yield histogram_family(
            "dsync_raft_commit_seconds",
            "Time from proposing on this node to the proposal's result (committed and applied).",
            [],
            [((), stats.commit_latency)],
        )
        yield histogram_family(
            "dsync_redis_save_seconds",
            "Redis latency: each save of hard state and entries, fsynced as REDIS_APPENDFSYNC says.",
            [],
            [((), stats.save_latency)],
        )
        yield GaugeMetricFamily(
            "dsync_raft_tick_lag_seconds",
            "How late the latest Raft tick fired: the event loop's lag.",
            value=stats.last_tick_lag,
        )
        yield CounterMetricFamily(
            "dsync_raft_ticks_skipped_total",
            "Ticks skipped because the event loop fell more than a tick behind.",
            value=stats.ticks_skipped,
        )

    def _peers(self) -> Iterator[Metric]:
        links = sorted(self._peer_links().items())
        connected = GaugeMetricFamily("dsync_peer_connected", "1 while the stream to the peer is up.", labels=["peer"])
        sent = CounterMetricFamily(
            "dsync_peer_messages_sent_total", "Raft messages written to the peer.", labels=["peer"]
        )
        dropped = CounterMetricFamily(
            "dsync_peer_messages_dropped_total",
            "Raft messages to the peer given up on (queue overflow, unreachable, failed write).",
            labels=["peer"],
        )
        queued = GaugeMetricFamily("dsync_peer_messages_queued", "Raft messages waiting to be sent.", labels=["peer"])
        for peer, link in links:
            connected.add_metric([peer], float(link.connected))
            sent.add_metric([peer], link.sent)
            dropped.add_metric([peer], link.dropped)
            queued.add_metric([peer], link.queued)
        yield from (connected, sent, dropped, queued)
        lag = GaugeMetricFamily(
            "dsync_raft_follower_lag_entries",
            "On the leader: log entries each follower is not yet known to hold "
            "(absent elsewhere, and for a follower whose position the leader has yet to learn).",
            labels=["peer"],
        )
        for peer, behind in sorted(self._replica.follower_lag().items()):
            lag.add_metric([peer], behind)
        yield lag
        now = time.monotonic()
        silence = GaugeMetricFamily(
            "dsync_peer_last_contact_seconds",
            "Seconds since the peer's latest Raft message reached this node (absent before the first).",
            labels=["peer"],
        )
        for peer, at in sorted(self._last_contact().items()):
            silence.add_metric([peer], max(0.0, now - at))
        yield silence
        received = self._received
        yield CounterMetricFamily(
            "dsync_peer_messages_received_total", "Raft messages received from peers.", value=received.messages
        )
        yield CounterMetricFamily(
            "dsync_peer_batches_received_total",
            "Stream writes received from peers; messages per batch is how well sending batches.",
            value=received.batches,
        )
        rejected = CounterMetricFamily(
            "dsync_peer_messages_rejected_total", "Raft messages received and skipped, by reason.", labels=["reason"]
        )
        rejected.add_metric(["malformed"], received.malformed)
        rejected.add_metric(["misaddressed"], received.misaddressed)
        rejected.add_metric(["stranger"], received.strangers)
        yield rejected
        refused = CounterMetricFamily(
            "dsync_peer_streams_refused_total",
            "Peer streams refused whole: naming another cluster, or without this cluster's CLUSTER_TOKEN.",
            labels=["reason"],
        )
        refused.add_metric(["other_cluster"], received.foreign_streams)
        refused.add_metric(["no_token"], received.unauthenticated_streams)
        yield refused

