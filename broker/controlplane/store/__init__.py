"""The resource store (SQLAlchemy 2.0 async over SQLite or PostgreSQL); the ORM stays inside.

Use :class:`Store`; schema migrations are in :mod:`broker.controlplane.store.migrate`.
"""

from broker.controlplane.store.repository import Store

__all__ = ["Store"]
