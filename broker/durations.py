"""ISO-8601 durations (``PT0.2S``, ``PT1M``, ``P1D``) as Knative's DeliverySpec writes them (K122).

One function, :func:`parse_duration`, turns such a text into seconds or raises
:class:`~broker.errors.InvalidResource` naming the field it came from. Parsing is done by
``isodate``; the checks around it reject what a delay or timeout cannot be (negative values,
empty designators such as ``PT`` that isodate reads as zero).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import isodate

from broker.errors import InvalidResource

_EXAMPLES = "an ISO-8601 duration such as PT0.2S, PT1M or P1D"

# Years and months have no fixed length; measure them from a fixed day so the result is
# deterministic (nobody sensibly writes a retry delay in months, but it must not crash).
_EPOCH = datetime(2000, 1, 1)


def parse_duration(text: str, field: str) -> float:
    """Seconds in the ISO-8601 duration ``text``; InvalidResource(field, ...) if it is not one."""
    if not isinstance(text, str) or not text:
        raise InvalidResource(field, f"must be {_EXAMPLES}, got {text!r}")
    # isodate reads "PT" and "P1DT" (a time designator with nothing after it) as valid.
    if text.endswith("T"):
        raise InvalidResource(field, f"{text!r} is not {_EXAMPLES}: 'T' must be followed by a time")
    try:
        parsed = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise InvalidResource(field, f"{text!r} is not {_EXAMPLES}") from exc
    delta = parsed if isinstance(parsed, timedelta) else parsed.totimedelta(start=_EPOCH)
    seconds = delta.total_seconds()
    if seconds < 0:
        raise InvalidResource(field, f"{text!r} is negative; a duration must be zero or more")
    return seconds
