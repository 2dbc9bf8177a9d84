"""The bus layer's import rules, read from the import graph (grimp, as import-linter does):

- an adapter imports from cemesh only the bus layer (``broker.dataplane.bus``),
  ``broker.core.errors`` and ``broker.core.events``, and no other adapter (only the ``adapters``
  package's lazy export helper);
- an adapter's ``options`` module imports only pydantic and the standard library (the settings
  import it: it must not load a driver or anything of cemesh);
- the bus layer imports from cemesh only ``broker.core.errors`` and ``broker.core.events``, never an
  adapter;
- no import cycle among the adapters' and the bus layer's modules.
"""

from __future__ import annotations

import sys

import grimp
import pytest

ADAPTERS = ("memory", "kafka", "nats", "pubsub", "redis_streams")
ALLOWED_CORE = ("broker.core.errors", "broker.core.events")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("broker", "adapters", include_external_packages=True)


def imports_of(graph: grimp.ImportGraph, prefix: str) -> dict[str, set[str]]:
    return {
        module: set(graph.find_modules_directly_imported_by(module))
        for module in graph.modules
        if module == prefix or module.startswith(prefix + ".")
    }


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_uses_only_the_bus_layer_errors_and_events_of_cemesh(
    graph: grimp.ImportGraph, adapter: str
) -> None:
    package = f"adapters.{adapter}"
    for module, imported in imports_of(graph, package).items():
        for target in imported:
            if within(target, "broker"):
                assert within(target, "broker.dataplane.bus") or target in ALLOWED_CORE, (
                    module,
                    target,
                )
            if within(target, "adapters"):
                assert target == "adapters" or within(target, package), (module, target)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapters_options_module_imports_only_pydantic(
    graph: grimp.ImportGraph, adapter: str
) -> None:
    imported = graph.find_modules_directly_imported_by(f"adapters.{adapter}.options")
    assert imported - set(sys.stdlib_module_names) <= {"pydantic", "annotated_types"}


def test_the_bus_layer_imports_neither_adapters_nor_the_rest_of_cemesh(
    graph: grimp.ImportGraph,
) -> None:
    for module, imported in imports_of(graph, "broker.dataplane.bus").items():
        for target in imported:
            if within(target, "broker"):
                assert within(target, "broker.dataplane.bus") or target in ALLOWED_CORE, (
                    module,
                    target,
                )
            assert not within(target, "adapters"), (module, target)


def test_no_import_cycle_among_the_adapters_and_the_bus_layer(graph: grimp.ImportGraph) -> None:
    modules = {*imports_of(graph, "adapters"), *imports_of(graph, "broker.dataplane.bus")}
    for module in modules:
        for target in graph.find_modules_directly_imported_by(module):
            if target in modules and target != module:
                # A path back from what it imports to itself would be a cycle.
                assert not graph.chain_exists(importer=target, imported=module), (module, target)
