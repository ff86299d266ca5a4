"""Turning the node's plain counters into Prometheus metric families at scrape time.

Collectors read the node's own objects when Prometheus asks, instead of updating
metric objects as things happen: the hot paths stay free of any metrics library, and
several nodes in one process (as the tests run them) each export only their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from server.replica.stats import Histogram

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    """`CommitUnknown` -> `commit_unknown`: error class names as label values."""
    return _CAMEL.sub("_", name).lower()


def buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets of a plain histogram, `+Inf` last."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        running += count
        out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
    out.append(("+Inf", running + histogram.counts[-1]))
    return out


def histogram_family(
    name: str, documentation: str, labels: Iterable[str], series: Iterable[tuple[Iterable[str], Histogram]]
) -> HistogramMetricFamily:
    """One histogram family: `series` pairs label values with a plain histogram."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, histogram in series:
        family.add_metric(list(values), buckets(histogram), histogram.total)
    return family
