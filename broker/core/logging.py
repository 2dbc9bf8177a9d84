"""Log setup for ``cemesh serve``: JSON lines (default) or plain text, one handler on stderr.

An application that embeds cemesh through :func:`broker.create_app` keeps its own logging;
only the CLI calls :func:`configure_logging`. :class:`ContextAdapter` is the one way to
attach fixed fields (a source's name, say) to a logger's every line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the root handler; its access log is off (hot path).
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every migration step at INFO; only its warnings matter at startup.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """A LoggerAdapter whose fixed fields are *added to* each call's ``extra``.

    Python < 3.13's :class:`logging.LoggerAdapter` replaces the call's ``extra`` with its own
    (``merge_extra`` came in 3.13), so ``log.warning("...", extra={"error": ...})`` through an
    adapter silently lost ``error``. Here the call's fields win over the adapter's on a clash.
    """

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs
