"""CloudEvents attribute rules every content mode of the HTTP binding shares (no I/O).

Owns which attributes are core per version, :func:`validate` (required attributes, K40, K48,
C1-C5; values, C8-C10, C14) and which media types are JSON (:func:`is_json_media_type`, C55,
C56). :mod:`broker.core.binding` (binary mode, the entry points) and :mod:`broker.core.binding_json`
(the JSON format: structured and batched mode) build on it.
"""

from __future__ import annotations

import re
from datetime import date

from broker.core.errors import BindingError
from broker.core.events import AttributeValue
from broker.core.memo import MAX_VALUE_LENGTH, remember

SUPPORTED_SPEC_VERSIONS = ("1.0", "0.3")

# Core attributes per version; in structured mode these must be JSON strings. Anything else is
# an extension (string, integer or boolean). 0.3's `schemaurl` and `datacontentencoding` are
# plain extensions in a 1.0 event, and 1.0's `dataschema` is one in a 0.3 event.
_CORE_V1 = frozenset(
    ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")
)
_CORE_V03 = frozenset(
    (
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "datacontentencoding",
        "schemaurl",
        "subject",
        "time",
    )
)
CORE = {"1.0": _CORE_V1, "0.3": _CORE_V03}
SUPPORTED_TEXT = ", ".join(SUPPORTED_SPEC_VERSIONS)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

NAME = re.compile(r"[a-z0-9]+")  # C16
# C14: C0 and C1 controls, DEL, unpaired surrogates and Unicode noncharacters.
_BAD_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    + "]"
)
# C10: RFC 3339 date-time (section 5.6), `T`/`Z` in either case, leap second allowed. The day
# of month is range-checked here and against the month (and leap years) in `_check_time`.
_RFC3339 = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"[Tt](?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60)(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
# RFC 3986 characters: unreserved, reserved and %HH escapes (no spaces, no non-ASCII).
_URI_CHARS = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:" + _URI_CHARS)  # C8
_URI_REFERENCE = re.compile(_URI_CHARS)  # 0.3 schemaurl

# Memo table (written only through memo.remember, which bounds it): the same few content types
# arrive on every request.
_JSON_MEDIA_TYPE: dict[str, bool] = {}


def is_json_media_type(content_type: str | None) -> bool:
    """``*/json`` or ``*/*+json``, parameters ignored; no type at all means JSON (C55, C56)."""
    if content_type is None:
        return True
    verdict = _JSON_MEDIA_TYPE.get(content_type)
    if verdict is None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        verdict = media_type.endswith("/json") or media_type.endswith("+json")
        remember(_JSON_MEDIA_TYPE, content_type, verdict, max_key_length=MAX_VALUE_LENGTH)
    return verdict


def where(name: str, binary: bool) -> str:
    if not binary:
        return ""
    return " (header content-type)" if name == "datacontenttype" else f" (header ce-{name})"


def _bad_char_message(name: str, value: str, binary: bool) -> str | None:
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    return (
        f"attribute '{name}' contains U+{ord(found.group()):04X} at offset {found.start()}: "
        f"control characters and noncharacters are not allowed (C14){where(name, binary)}"
    )


def _check_time(value: str, binary: bool) -> None:
    if _RFC3339.fullmatch(value) is not None:
        if value[8:10] < "29":
            return
        try:  # the regex allows day 29-31 in every month; the calendar decides.
            date.fromisoformat(value[:10])
            return
        except ValueError:
            pass
    raise BindingError(
        f"attribute 'time' is not an RFC 3339 timestamp: {value!r} (C10){where('time', binary)}"
    )


def validate(attributes: dict[str, AttributeValue], binary: bool) -> None:
    """Check the required attributes (K40, K48, C1-C5) and the value rules (C8-C10, C14)."""
    specversion = attributes.get("specversion")
    if specversion not in SUPPORTED_SPEC_VERSIONS:
        if specversion is None:
            raise BindingError(
                f"missing required attribute 'specversion'{where('specversion', binary)}"
            )
        raise BindingError(
            f"unsupported specversion {specversion!r} (supported: {SUPPORTED_TEXT})"
            f"{where('specversion', binary)}"
        )
    get = attributes.get
    if not (get("id") and get("source") and get("type")):
        for name in ("id", "source", "type"):
            value = get(name)
            if value is None:
                raise BindingError(f"missing required attribute '{name}'{where(name, binary)}")
            if value == "":
                raise BindingError(
                    f"required attribute '{name}' must not be empty{where(name, binary)}"
                )
    # C14. isprintable() is false for every control character, so one call on all values
    # clears the common case; it is also false for some harmless characters (non-ASCII
    # spaces, format characters), hence the precise regex when it says no.
    if binary:  # every value is a str
        clean = "".join(attributes.values()).isprintable()  # type: ignore[arg-type]
    else:
        clean = True
        for value in attributes.values():
            if type(value) is str and not value.isprintable():
                clean = False
                break
    if not clean:
        for name, value in attributes.items():
            if type(value) is str:
                message = _bad_char_message(name, value, binary)
                if message is not None:
                    raise BindingError(message)
    time = get("time")
    if time is not None:
        _check_time(str(time), binary)
    if "subject" in attributes and attributes["subject"] == "":
        raise BindingError(
            f"attribute 'subject' must not be empty when present (C9){where('subject', binary)}"
        )
    if "datacontenttype" in attributes and attributes["datacontenttype"] == "":
        raise BindingError("attribute 'datacontenttype' must not be empty when present (C6)")
    if specversion == "1.0":
        if "dataschema" in attributes:
            schema = attributes["dataschema"]
            if _ABSOLUTE_URI.fullmatch(str(schema)) is None:
                raise BindingError(
                    f"attribute 'dataschema' must be a non-empty absolute URI, got {schema!r} "
                    f"(C8){where('dataschema', binary)}"
                )
    elif "schemaurl" in attributes:
        schema = attributes["schemaurl"]
        if schema == "" or _URI_REFERENCE.fullmatch(str(schema)) is None:
            raise BindingError(
                f"attribute 'schemaurl' must be a non-empty URI-reference, got {schema!r}"
                f"{where('schemaurl', binary)}"
            )
