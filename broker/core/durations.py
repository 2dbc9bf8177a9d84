"""ISO-8601 durations (``PT0.2S``, ``PT1M``, ``P1D``) as Knative's DeliverySpec writes them (K122).

One function, :func:`parse_duration`, turns such a text into seconds or raises
:class:`~broker.core.errors.InvalidResource` naming the field it came from and the rule it breaks.
Every duration field (each ``delivery`` field, KafkaChannel ``retentionDuration``, the delivery
settings) goes through it, so one set of bounds holds everywhere:

- parsing is done by ``isodate``; the checks around it reject what a delay or timeout cannot
  be: negative values, empty designators such as ``PT`` (isodate reads them as zero), texts
  longer than :data:`MAX_DURATION_TEXT` characters;
- years and months must be whole numbers (a fraction of a month has no length);
- the result is at most :data:`MAX_DURATION_SECONDS` (``P100Y``, 36,525 days): a longer
  duration, or numbers too large for any clock, are refused with that limit in the message.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import isodate

from broker.core.errors import InvalidResource

_EXAMPLES = "an ISO-8601 duration such as PT0.2S, PT1M or P1D"

# Years and months have no fixed length; measure them from a fixed day so the result is
# deterministic (nobody sensibly writes a retry delay in months, but it must not crash).
_EPOCH = datetime(2000, 1, 1)

MAX_DURATION_YEARS = 100
_LIMIT = _EPOCH.replace(year=_EPOCH.year + MAX_DURATION_YEARS)
MAX_DURATION_SECONDS = (_LIMIT - _EPOCH).total_seconds()
MAX_DURATION_TEXT = 64  # characters; "P100Y" or "PT3153600000S" need far fewer
_TOO_LONG = f"is longer than the limit of {MAX_DURATION_YEARS} years (P{MAX_DURATION_YEARS}Y)"


def parse_duration(text: object, field: str) -> float:
    """Seconds in the ISO-8601 duration ``text``; InvalidResource(field, ...) if it is not one."""
    if not isinstance(text, str) or not text:
        raise InvalidResource(field, f"must be {_EXAMPLES}, got {text!r}")
    if len(text) > MAX_DURATION_TEXT:
        raise InvalidResource(
            field, f"is {len(text)} characters long; {_EXAMPLES} has at most {MAX_DURATION_TEXT}"
        )
    # isodate reads "PT" and "P1DT" (a time designator with nothing after it) as valid.
    if text.endswith("T"):
        raise InvalidResource(field, f"{text!r} is not {_EXAMPLES}: 'T' must be followed by a time")
    try:
        parsed = isodate.parse_duration(text)
    except OverflowError as exc:  # a component too large for a timedelta
        raise InvalidResource(field, f"{text!r} {_TOO_LONG}") from exc
    except (isodate.ISO8601Error, ValueError, ArithmeticError) as exc:
        raise InvalidResource(field, f"{text!r} is not {_EXAMPLES}") from exc
    if isinstance(parsed, timedelta):
        delta = parsed
    else:  # years and/or months: a calendar span, measured from _EPOCH
        years, months = parsed.years, parsed.months
        fractional = False
        try:  # Decimal arithmetic on 40-digit years raises rather than overflows
            too_long = abs(years * 12 + months) > MAX_DURATION_YEARS * 12
            fractional = bool(years % 1 or months % 1)
        except ArithmeticError:
            too_long = True
        if too_long:
            raise InvalidResource(field, f"{text!r} {_TOO_LONG}")
        if fractional:
            raise InvalidResource(
                field,
                f"{text!r} has a fraction of a year or month, which has no fixed length: "
                "use whole years/months, or days and smaller units (P2.5Y -> P912DT12H)",
            )
        try:
            delta = parsed.totimedelta(start=_EPOCH)
        except (OverflowError, ValueError) as exc:
            raise InvalidResource(field, f"{text!r} {_TOO_LONG}") from exc
    seconds = delta.total_seconds()
    if seconds < 0:
        raise InvalidResource(field, f"{text!r} is negative; a duration must be zero or more")
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidResource(field, f"{text!r} {_TOO_LONG}")
    return seconds
