"""Lock, queue and cache metrics, read from the state machines and servicers at scrape time.

No per-resource, per-owner, per-topic or per-key labels: those sets grow with what
clients do, and every label value is a series Prometheus keeps.  Totals over the
whole machine are what alerting needs; the Stats and ListLocks RPCs show the details.

State-machine figures (holders, depth, evictions) are this replica's view, the same on
every node once applied; read figures (cache hits, lock waits) count this node's calls.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.api.cache_service import CacheStats
from server.api.lock_service import LockStats
from server.gateway.families import histogram_family
from server.gateway.views import CacheTotals, LockTotals, QueueTotals


class ServiceCollector(Collector):
    def __init__(
        self,
        locks: LockTotals,
        lock_waits: LockStats,
        queue: QueueTotals,
        cache: CacheTotals,
        cache_reads: CacheStats,
    ) -> None:
        self._locks = locks
        self._lock_waits = lock_waits
        self._queue = queue
        self._cache = cache
        self._cache_reads = cache_reads

    def collect(self) -> Iterator[Metric]:
        yield from self._lock_metrics()
        yield from self._queue_metrics()
        yield from self._cache_metrics()

    def _lock_metrics(self) -> Iterator[Metric]:
        locks, holders, waiters = self._locks.totals()
        yield GaugeMetricFamily("dsync_lock_resources", "Resources someone holds or waits for.", value=locks)
        yield GaugeMetricFamily("dsync_lock_holders", "Lock holders, over every resource.", value=holders)
        yield GaugeMetricFamily("dsync_lock_waiters", "Queued lock requests, over every resource.", value=waiters)
        waits = self._lock_waits
        yield histogram_family(
            "dsync_lock_wait_seconds",
            "How long Acquires queued on this node waited, by outcome (granted, or not: timeout, withdrawn).",
            ["outcome"],
            [(["granted"], waits.granted), (["not_granted"], waits.not_granted)],
        )

    def _queue_metrics(self) -> Iterator[Metric]:
        queue = self._queue
        messages = GaugeMetricFamily(
            "dsync_queue_messages",
            "Messages held, by state, over every topic (dead-letter topics included): ready is the depth.",
            labels=["state"],
        )
        for state, count in zip(("ready", "in_flight", "delayed"), queue.totals(), strict=True):
            messages.add_metric([state], count)
        yield messages
        yield CounterMetricFamily(
            "dsync_queue_redeliveries_total",
            "Deliveries of a message delivered before (its visibility timeout passed, or it was nacked).",
            value=queue.redeliveries,
        )
        yield CounterMetricFamily(
            "dsync_queue_dead_lettered_total",
            "Messages moved to their dead-letter topic after their last delivery.",
            value=queue.dead_lettered,
        )

    def _cache_metrics(self) -> Iterator[Metric]:
        cache, reads = self._cache, self._cache_reads
        yield CounterMetricFamily("dsync_cache_hits_total", "Gets on this node that found the key.", value=reads.hits)
        yield CounterMetricFamily(
            "dsync_cache_misses_total", "Gets on this node that did not find the key.", value=reads.misses
        )
        yield CounterMetricFamily(
            "dsync_cache_evictions_total", "Entries evicted to stay within the cache's limits.", value=cache.evictions
        )
        yield CounterMetricFamily(
            "dsync_cache_expirations_total", "Entries removed because their TTL passed.", value=cache.expirations
        )
        yield GaugeMetricFamily("dsync_cache_entries", "Entries in the cache.", value=len(cache))
        yield GaugeMetricFamily(
            "dsync_cache_bytes", "Bytes the entries count against CACHE_MAX_BYTES.", value=cache.bytes_used
        )
