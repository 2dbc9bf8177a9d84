"""A librdkafka group member that cannot leave its group never keeps cemesh from stopping.

librdkafka's ``close`` has no deadline, and a test run once saw it wait in its revoke step for
over 15 minutes on Tansu (``adapters/kafka/member_thread.py``). Here a real member of a real
group on Tansu gets a ``close`` that blocks the same way (a fault put in front of the real one);
``stop`` must give the member up after ``CLOSE_TIMEOUT``, fail later commits as a closed
consumer's, and leave nothing that would keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from functools import partial
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition

from adapters.kafka import librdkafka_consumer
from adapters.kafka.librdkafka_consumer import LibrdkafkaConsumer
from adapters.kafka.member_thread import MemberThread
from adapters.kafka.options import KafkaOptions
from broker.core.errors import BusError
from tests.support.servers.kafka import KafkaServer


class _Quiet(ConsumerRebalanceListener):
    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None


class _CloseThatHangs:
    """The real consumer, whose ``close`` waits until released (librdkafka's hang)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.release = threading.Event()

    def close(self) -> None:
        self.release.wait(30)
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_stop_gives_up_a_member_whose_close_never_returns(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    options = KafkaOptions(bootstrap_servers=kafka_server.bootstrap_servers)
    member = LibrdkafkaConsumer(options, f"close-{uuid.uuid4().hex}")
    member.subscribe([f"close-{uuid.uuid4().hex}"], listener=_Quiet())
    await member.getmany(timeout_ms=200, max_records=10)  # joins the group
    hanging = _CloseThatHangs(member._consumer)
    member._consumer = hanging
    monkeypatch.setattr(librdkafka_consumer, "CLOSE_TIMEOUT", 0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="adapters.kafka"):
            async with asyncio.timeout(10):
                await member.stop()
        assert "did not leave its group" in caplog.text
        with pytest.raises(BusError, match="closed"):
            await member.commit({TopicPartition("t", 0): 1})
        with pytest.raises(BusError, match="stopped"):
            await member.getmany(timeout_ms=10, max_records=1)
    finally:
        hanging.release.set()  # the real close then runs on the abandoned thread


async def test_member_thread_runs_calls_in_order_on_a_daemon_and_refuses_after_shutdown() -> None:
    thread = MemberThread("test-member")
    names: list[str] = []

    def record(value: int) -> int:
        names.append(threading.current_thread().name)
        return value

    results = await asyncio.gather(*(thread.run(partial(record, n)) for n in range(5)))
    assert results == [0, 1, 2, 3, 4]
    assert set(names) == {"test-member"}
    assert thread._thread.daemon
    with pytest.raises(ZeroDivisionError):
        await thread.run(lambda: 1 / 0)
    thread.shutdown()
    with pytest.raises(RuntimeError, match="stopped"):
        thread.run(lambda: None)
    await asyncio.to_thread(thread._thread.join, 5)
    assert not thread._thread.is_alive()
