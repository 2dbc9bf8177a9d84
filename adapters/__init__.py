"""The bus adapters, one package per driver; each implements ``broker.dataplane.bus``'s contract.

Every adapter package has the same rooms: ``options.py`` (its typed options model: light, it
imports only pydantic, because the settings reuse its fields), ``bus.py`` (the adapter class,
exported by the package) and modules for what is specific to its driver (names and wire format,
publishing, consuming). What all adapters share (the hand-off queue, argument checks, option
parsing) is in ``broker/dataplane/bus/``. A package exports its adapter lazily
(:func:`lazy_exports`), so that importing ``adapters.<name>.options`` does not load the driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from the submodule
    ``exports[name]`` on first use (PEP 562)."""

    def module_getattr(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return module_getattr
