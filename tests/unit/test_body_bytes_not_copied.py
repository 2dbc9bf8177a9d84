"""Binary mode carries the request body as the event's data and the delivery's body unaltered
and uncopied (issue 14, item 6): the ingress keeps the bytes object it read, the memory bus passes
the event by reference, and the delivery encodes only headers around the same object."""

from __future__ import annotations

import asyncio

from adapters.memory import MemoryBus
from broker.core import binding
from broker.dataplane.bus import Message

HEADERS = [
    (b"ce-specversion", b"1.0"),
    (b"ce-id", b"1"),
    (b"ce-source", b"/s"),
    (b"ce-type", b"t"),
    (b"content-type", b"application/octet-stream"),
]


def test_binary_body_becomes_the_data_and_the_delivery_body_without_a_copy() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    (event,) = binding.parse_request(HEADERS, body)
    assert event.data is body
    _, delivered = binding.to_binary(event)
    assert delivered is body


async def test_the_memory_bus_hands_the_same_event_object_to_its_consumer() -> None:
    body = b"x" * 65536
    (event,) = binding.parse_request(HEADERS, body)
    bus = MemoryBus()
    await bus.open()
    got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def handler(message: Message) -> None:
        got.set_result(message)

    try:
        await bus.subscribe("topic", group="g", handler=handler)
        await bus.publish("topic", event)
        message = await asyncio.wait_for(got, 10)
        assert message.event is event
        assert message.event.data is body
    finally:
        await bus.close()
