"""The NATS bus's names (pure): streams, durable consumers and subjects of cemesh topics and
groups, and the de-duplication id of an event."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote

from broker.core.events import BROKER_TTL, CloudEvent, attribute_text

_MAX_NAME = 200
_PLAIN_NAME = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_SUBJECT_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F)) - {".", "*", ">"}
_ID_SAFE = "/:@!$&'()*+,;=?#~"


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _name(text: str) -> str:
    # Stream and consumer names may not contain '.', '*', '>', whitespace or path separators.
    # Plain names (letters, digits, '-', '.') only swap '.' for '_', which no plain name
    # contains, so the mapping stays one-to-one; anything else gets a digest after a '~', which
    # no plain name contains either.
    if len(text) <= _MAX_NAME and _PLAIN_NAME.fullmatch(text):
        return text.replace(".", "_")
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', text)[:100]}~{_digest(text, 16)}"


def stream_name(topic: str) -> str:
    """The stream of ``topic``: ``cemesh.broker.default.b`` -> ``cemesh_broker_default_b``."""
    return _name(topic)


def consumer_name(group: str) -> str:
    """The durable consumer of ``group``: ``cemesh.trigger.<uid>`` -> ``cemesh_trigger_<uid>``."""
    return _name(group)


def subject_of(topic: str) -> str:
    """The subject events of ``topic`` are published on: the topic when it is a valid subject
    (dot-separated tokens of printable ASCII without ``*``, ``>`` or a leading ``$``), otherwise
    ``cemesh-topic.<digest>``."""
    tokens = topic.split(".")
    if len(topic) <= _MAX_NAME and all(
        token and token[0] != "$" and all(c in _SUBJECT_CHARS for c in token) for token in tokens
    ):
        return topic
    return f"cemesh-topic.{_digest(topic, 32)}"


def dedup_id(event: CloudEvent) -> str | None:
    """The ``Nats-Msg-Id`` of ``event``: its source and id (what makes an event unique), plus its
    ``knativebrokerttl`` if any, so that a reply re-entering the broker unchanged but for the
    decremented ttl is a new message, not a duplicate. None when source or id is missing."""
    source, id_ = event.attributes.get("source"), event.attributes.get("id")
    if source is None or id_ is None:
        return None
    parts = [quote(attribute_text(source), safe=_ID_SAFE), quote(attribute_text(id_), _ID_SAFE)]
    ttl = event.attributes.get(BROKER_TTL)
    if ttl is not None:
        parts.append(quote(attribute_text(ttl), safe=_ID_SAFE))
    return " ".join(parts)


def delivery_count(reply: str) -> int:
    """How many times JetStream delivered the message whose ack subject is ``reply``.

    What nats-py's ``Msg.metadata.num_delivered`` says, without building the whole metadata (a
    datetime and two dataclasses per message, the largest cost of receiving one): the ack
    subject is ``$JS.ACK.<stream>.<consumer>.<delivered>.<...>`` (9 tokens) or, with a domain
    and account hash, ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<...>`` (11 or
    more). ValueError for anything else (not a JetStream message)."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK" or len(tokens) == 10:
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    return int(tokens[4] if len(tokens) == 9 else tokens[6])


@dataclass(frozen=True, slots=True)
class Target:
    """Where the events of one topic go: its stream and the subject it captures."""

    stream: str
    subject: str
