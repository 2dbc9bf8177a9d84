"""A real cemesh (``running_cemesh``) served from a thread of its own, for synchronous tests.

hypothesis and schemathesis drive their examples from plain functions; this runs cemesh's event
loop in a background thread for the whole test (module), and hands the test its base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.cemesh import RunningCemesh, running_cemesh


@contextlib.contextmanager
def cemesh_in_thread(tmp_path: Path, **overrides: Any) -> Iterator[RunningCemesh]:
    """Start cemesh in a thread; yield it once it serves; stop it (and the thread) after."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        async with running_cemesh(tmp_path, **overrides) as cemesh:
            holder["cemesh"] = cemesh
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the test below
            holder["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name="cemesh", daemon=True)
    thread.start()
    if not started.wait(60) or "cemesh" not in holder:
        raise RuntimeError(f"cemesh did not start: {holder.get('error')!r}")
    try:
        yield holder["cemesh"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(60)
        if "error" in holder:
            raise holder["error"]
