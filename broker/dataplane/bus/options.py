"""How an adapter's options are parsed: one typed pydantic model per adapter, validated here.

Each adapter declares its options as a pydantic model in ``adapters/<name>/options.py`` (fields,
defaults, limits, descriptions: the one place for them; the settings in ``broker/core/config.py``
reuse those fields as ``<bus>_<option>``). :func:`parse_options` builds the model from the plain
mapping an adapter receives (``create_bus(name, options)``):

- Strictly: a value must already have its type (``"10"`` is not an integer, ``True`` is not a
  number), since the mapping comes from code or from the settings, which parsed text already.
- ``None`` means "not set": the model's default applies.
- Unknown keys and bad values are a terminal :class:`~broker.core.errors.BusError` naming each
  offending option, chained from pydantic's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from broker.core.errors import BusError

M = TypeVar("M", bound=BaseModel)


def parse_options(model: type[M], bus: str, options: Mapping[str, Any] | None) -> M:
    """``options`` validated as ``model`` for the adapter ``bus`` (see the module docstring)."""
    values = {name: value for name, value in (options or {}).items() if value is not None}
    try:
        return model.model_validate(values, strict=True)
    except ValidationError as exc:
        raise BusError(f"{bus} bus: {describe(exc)}", retryable=False) from exc


def describe(exc: ValidationError) -> str:
    """Each problem of ``exc`` as ``option: what is wrong (got value)``, one after the other."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        what = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown option {where!r}")
        elif not where:  # a rule between options (the model's own validator)
            problems.append(what)
        else:
            problems.append(f"{where}: {what} (got {error['input']!r})")
    return "; ".join(problems)
