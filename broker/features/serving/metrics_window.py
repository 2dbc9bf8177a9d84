"""Per-second metric buckets and their stable / panic window averages (Knative's KPA collector).

Owns :class:`MetricWindow`, the pure data structure the autoscaler reads its two observed
values from. It mirrors Knative Serving's ``pkg/autoscaler/aggregation`` ``TimedFloat64Buckets``
(linear averaging, 1 s buckets, ``config.BucketSize``) as used by
``pkg/autoscaler/metrics/collector.go``:

- one bucket per whole second; the average over a window is the sum of the buckets inside it
  divided by the number of seconds the window covers, but never by more seconds than data has
  been written for (``lastWrite - firstWrite + 1``), so a new revision is not diluted by the
  empty past;
- nothing written for a whole window means the average is 0.

No clock is read here: every call passes ``now`` (seconds, any monotonic origin), so tests drive
a fake clock.
"""

from __future__ import annotations

import math
from collections import deque

from broker.features.serving.scaling_policy import ScalingPolicy

# Knative caps every window (stable window, scale-down delay) at one hour (WindowMax); keeping an
# hour of 1 s buckets bounds memory at 3600 small entries per revision.
MAX_WINDOW_SECONDS = 3600.0


class _Bucket:
    """One second of samples: concurrency is a level (averaged), requests a count (summed)."""

    __slots__ = ("concurrency_sum", "requests", "samples", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.concurrency_sum = 0.0
        self.samples = 0
        self.requests = 0

    @property
    def concurrency(self) -> float:
        return self.concurrency_sum / self.samples if self.samples else 0.0


class MetricWindow:
    """Per-second buckets of in-flight concurrency and request counts for one revision.

    Call :meth:`record` once per autoscaler tick (about every second), *including ticks with no
    traffic* (record zeros): like Knative's scraper, the averages assume a continuous series.
    """

    def __init__(self, retention: float = MAX_WINDOW_SECONDS) -> None:
        if retention < 1:
            raise ValueError("retention must be at least one second")
        self._retention = math.ceil(retention)
        self._buckets: deque[_Bucket] = deque()
        self._first_write: int | None = None

    def record(self, now: float, concurrency: float, requests: int) -> None:
        """Add one sample: ``concurrency`` in flight across all replicas, ``requests`` arrived.

        Knative sums per-pod stats that are already per-second averages into a bucket; cemesh
        receives the *total* over replicas, possibly twice in one second when ticks jitter, so
        concurrency samples in one bucket are averaged (a level) and requests are summed (a
        count). A sample older than the newest bucket is folded into the newest bucket.
        """
        if concurrency < 0 or requests < 0:
            raise ValueError("concurrency and requests must be zero or more")
        second = math.floor(now)
        if self._buckets and second <= self._buckets[-1].second:
            bucket = self._buckets[-1]
        else:
            bucket = _Bucket(second)
            self._buckets.append(bucket)
            if self._first_write is None:
                self._first_write = second
        bucket.concurrency_sum += concurrency
        bucket.samples += 1
        bucket.requests += requests
        oldest = second - self._retention
        while self._buckets and self._buckets[0].second <= oldest:
            self._buckets.popleft()

    def averages(self, now: float, policy: ScalingPolicy) -> tuple[float, float]:
        """(stable, panic) averages of the policy's metric at ``now``.

        For ``concurrency`` this is the average number of requests in flight; for ``rps`` the
        average requests per second. Windows are the policy's ``stable_window`` and
        ``panic_window`` (seconds, rounded to whole buckets).
        """
        return (
            self.average(now, policy.stable_window, policy.metric),
            self.average(now, policy.panic_window, policy.metric),
        )

    def average(self, now: float, window: float, metric: str) -> float:
        """Average of ``metric`` over the ``window`` seconds ending at ``now`` (Knative linear)."""
        if not self._buckets or self._first_write is None:
            return 0.0
        buckets = max(1, round(window))
        now_second = math.floor(now)
        last_write = self._buckets[-1].second
        if now_second - last_write >= buckets:
            return 0.0  # Nothing for a whole window (Knative: "just 0").
        start = now_second - buckets  # exclusive
        total = 0.0
        for bucket in reversed(self._buckets):
            if bucket.second <= start:
                break
            if bucket.second > now_second:
                continue
            total += bucket.concurrency if metric == "concurrency" else bucket.requests
        # Knative divides by the buckets written so far (inclusive), at most the window.
        written = min(last_write, now_second) - self._first_write + 1
        return total / max(1, min(buckets, written))
