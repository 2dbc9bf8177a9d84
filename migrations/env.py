"""Alembic environment of the cemesh store.

In-process (``broker.controlplane.store.migrate``, ``Store.open``) the caller passes a live
synchronous connection, already inside a transaction, in ``config.attributes["connection"]``. Run
from the alembic command line (``alembic -c migrations/alembic.ini ...``) it makes its own async
engine from ``sqlalchemy.url``. Batch mode is on so that ALTERs work on SQLite.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from broker.controlplane.store.engine import make_engine, writer
from broker.controlplane.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = make_engine(url)
    try:
        async with writer(engine).connect() as conn:
            await conn.run_sync(_run_on)
            await conn.commit()
    finally:
        await engine.dispose()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (alembic -x is not used; edit alembic.ini)")
    return url


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run_on(connection)
else:
    asyncio.run(_run_standalone(_url()))
