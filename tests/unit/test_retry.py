"""The pure retry policy: success and retry predicates, backoff formulas, Retry-After (K7-K11,
K99, K113-K121)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.core.spec import DeliveryPolicy
from broker.dataplane.dispatch.retry import (
    backoff_delay,
    is_success,
    next_wait,
    parse_retry_after,
    should_retry,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_every_2xx_is_success_k7_k99(status: int) -> None:
    assert is_success(status)
    assert not should_retry(status)


@pytest.mark.parametrize("status", [100, 101, 199, 300, 301, 302, 304, 307, 308, 399])
def test_1xx_and_3xx_are_failures_that_are_not_retried_k10(status: int) -> None:
    assert not is_success(status)
    assert not should_retry(status)


@pytest.mark.parametrize("status", [400, 401, 403, 405, 410, 413, 415, 422, 499])
def test_other_4xx_are_not_retried_k8_k119(status: int) -> None:
    assert not is_success(status)
    assert not should_retry(status)


@pytest.mark.parametrize("status", [404, 408, 409, 429])
def test_404_408_409_429_are_retried_k9_k119(status: int) -> None:
    assert not is_success(status)
    assert should_retry(status)


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 599])
def test_every_5xx_is_retried_k9_k119(status: int) -> None:
    assert not is_success(status)
    assert should_retry(status)


def test_status_outside_the_table_is_retried_k11() -> None:
    assert should_retry(600)
    assert should_retry(999)


def test_no_response_at_all_is_retried_k119() -> None:
    """Transport errors and timeouts have no status: always worth another try."""
    assert should_retry(None)


def test_linear_backoff_is_delay_times_retry_number_k116() -> None:
    policy = DeliveryPolicy(retry=4, backoff_policy="linear", backoff_delay=0.2)
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_exponential_backoff_doubles_from_delay_k115_k116() -> None:
    """Our pick among K115-K117: delay * 2**(n-1), so the first retry waits exactly delay."""
    policy = DeliveryPolicy(retry=5, backoff_policy="exponential", backoff_delay=0.5)
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 8.0]
    )


@pytest.mark.parametrize("backoff_policy", ["linear", "exponential"])
def test_first_retry_waits_exactly_backoff_delay_k117(backoff_policy: str) -> None:
    policy = DeliveryPolicy(retry=1, backoff_policy=backoff_policy, backoff_delay=1.5)  # type: ignore[arg-type]
    assert backoff_delay(policy, 1) == 1.5


@pytest.mark.parametrize("backoff_policy", ["linear", "exponential"])
def test_retry_without_delay_waits_nothing_k118(backoff_policy: str) -> None:
    policy = DeliveryPolicy(retry=3, backoff_policy=backoff_policy)  # type: ignore[arg-type]
    assert [backoff_delay(policy, n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]


def test_huge_exponential_retry_number_does_not_overflow() -> None:
    policy = DeliveryPolicy(retry=5000, backoff_policy="exponential", backoff_delay=0.2)
    assert backoff_delay(policy, 5000) > 1e300


def test_retry_number_starts_at_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(DeliveryPolicy(retry=1, backoff_delay=1.0), 0)


@pytest.mark.parametrize(
    ("value", "seconds"), [("120", 120.0), ("0", 0.0), ("  7 ", 7.0), ("007", 7.0)]
)
def test_retry_after_delta_seconds_k121(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "Sat, 01 Mar 2025 12:00:30 GMT",  # IMF-fixdate (RFC 9110)
        "Saturday, 01-Mar-25 12:00:30 GMT",  # obsolete RFC 850 form
        "Sat Mar  1 12:00:30 2025",  # obsolete asctime form
    ],
)
def test_retry_after_http_date_k121(value: str) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(30.0)


def test_retry_after_date_in_the_past_means_no_wait_k121() -> None:
    past = (NOW - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(past, NOW) == 0.0


@pytest.mark.parametrize("value", ["", "  ", "soon", "-5", "1.5", "+3", "1e3", "Sat, 99 Foo"])
def test_retry_after_junk_is_ignored_k121(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def _capped(retry_after_max: float = 10.0, delay: float = 1.0) -> DeliveryPolicy:
    return DeliveryPolicy(
        retry=3, backoff_policy="linear", backoff_delay=delay, retry_after_max=retry_after_max
    )


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_lengthens_the_wait_on_429_and_503_k121(status: int) -> None:
    assert next_wait(_capped(), 1, status, 5.0) == 5.0


def test_retry_after_is_capped_by_retry_after_max_k121() -> None:
    assert next_wait(_capped(retry_after_max=10.0), 1, 429, 3600.0) == 10.0


def test_retry_after_never_shortens_the_backoff_k121() -> None:
    # linear, delay 1s, retry 3 -> backoff 3s; Retry-After 1s does not make it sooner
    assert next_wait(_capped(), 3, 503, 1.0) == 3.0


def test_retry_after_max_zero_disables_retry_after_k121() -> None:
    assert next_wait(_capped(retry_after_max=0.0), 1, 429, 5.0) == 1.0


@pytest.mark.parametrize("status", [500, 502, 404, 408, None])
def test_retry_after_ignored_on_other_statuses_k121(status: int | None) -> None:
    assert next_wait(_capped(), 1, status, 5.0) == 1.0


def test_without_retry_after_next_wait_is_the_backoff_k113() -> None:
    policy = DeliveryPolicy(retry=3, backoff_policy="exponential", backoff_delay=0.25)
    assert [next_wait(policy, n, 500, None) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
