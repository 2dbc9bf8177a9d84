"""Retry policy for outbound deliveries: which outcomes are retried and how long to wait.

Pure functions, no I/O (the Knative counterpart is ``pkg/kncloudevents/retries.go``). The
delivery loop in :mod:`broker.dataplane.dispatch.delivery` asks :func:`is_success`, then
:func:`should_retry`, then :func:`next_wait`, and does the sleeping itself.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from broker.core.spec import DeliveryPolicy

# Statuses whose Retry-After header is honoured (K121; Knative's generateBackoffFn).
RETRY_AFTER_STATUSES = frozenset({429, 503})


def is_success(status: int) -> bool:
    """Only a 2xx acknowledges a delivery (K99); 1xx and 3xx are failures too (K10)."""
    return 200 <= status < 300


# The 4xx statuses worth another try (K9, K119), each with the reason it can succeed later.
_RETRYABLE_4XX = frozenset(
    {
        # Not Found: the subscriber's route may not exist *yet* (a function scaling from zero,
        # a rollout in progress); the data-plane spec lists it as retryable.
        404,
        # Request Timeout: the recipient gave up waiting for us; a fresh attempt can make it.
        408,
        # Conflict: in the spec's retry list. A recipient that refuses a concurrent change may
        # accept the same event once the other writer is done.
        409,
        # Too Many Requests: back off and come again (Retry-After honoured, K121).
        429,
    }
)


def should_retry(status: int | None) -> bool:
    """Whether a failed attempt is worth repeating (K7-K11, K119).

    ``None`` means there was no response at all (connection refused, reset, timeout): retried,
    since the subscriber may be back in a moment and at-least-once allows a duplicate.
    """
    if status is None:
        return True
    if status >= 500:
        # Server-side trouble is usually transient (K9); codes past 599 are in no table and
        # count as retryable too (K11).
        return True
    # 1xx and 3xx are reserved and never retried (K10; redirects are never followed, C66); 2xx
    # is success; 400/401/403/413/415/422 and the other 4xx would fail the same way again (K8).
    return status in _RETRYABLE_4XX


def backoff_delay(policy: DeliveryPolicy, retry_number: int) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 = the first retry).

    Knative has three disagreeing formulas (K115 spec table, K116 API comment, K117
    reference code with a 0-based index; docs/requirements.md). cemesh uses, with
    ``d = policy.backoff_delay``::

        linear:       d * n
        exponential:  d * 2 ** (n - 1)

    so the first retry always waits exactly ``d`` (linear: d, 2d, 3d...; exponential: d, 2d,
    4d...). No delay configured means retries follow each other at once (K118).
    """
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    delay = policy.backoff_delay
    if delay <= 0:
        return 0.0
    if policy.backoff_policy == "linear":
        return delay * retry_number
    # 2**1023 is the largest finite power; past it the wait is "forever" anyway.
    return delay * math.ldexp(1.0, min(retry_number - 1, 1023))


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for, or ``None`` if it cannot be understood.

    Accepts delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``,
    also the obsolete RFC 850 and asctime forms); a date in the past means no wait (0.0).
    ``now`` must be timezone-aware.
    """
    text = value.strip()
    if not text:
        return None
    # delta-seconds is 1*DIGIT: no sign, no fraction (RFC 9110 §10.2.3).
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_wait(
    policy: DeliveryPolicy, retry_number: int, status: int | None, retry_after: float | None
) -> float:
    """Seconds to wait before retry ``retry_number``, honouring Retry-After (K121).

    On a 429 or 503 that carried a parsable Retry-After, and when ``policy.retry_after_max`` is
    positive, the wait is ``max(backoff, min(retry_after, retry_after_max))``: the recipient can
    slow us down, up to the cap, but never make us retry sooner than the backoff.
    """
    wait = backoff_delay(policy, retry_number)
    if retry_after is not None and status in RETRY_AFTER_STATUSES and policy.retry_after_max > 0:
        wait = max(wait, min(retry_after, policy.retry_after_max))
    return wait
