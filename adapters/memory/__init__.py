"""The in-memory bus (``bus: memory``): the embedded default adapter (see :mod:`.bus`).

Rooms: ``options.py`` (its options model), ``budget.py`` (what an event weighs and the bus-wide
byte budget publishers wait on), ``selection.py`` (which groups get an event when the
dispatcher selects them), ``bus.py`` (groups, subscriptions and the adapter).
"""

from typing import TYPE_CHECKING

from adapters import lazy_exports

if TYPE_CHECKING:
    from adapters.memory.bus import MemoryBus
    from adapters.memory.options import MemoryOptions

__all__ = ["MemoryBus", "MemoryOptions"]
__getattr__ = lazy_exports(__name__, {"MemoryBus": "bus", "MemoryOptions": "options"})
