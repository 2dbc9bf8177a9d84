"""Alembic migrations of the cemesh resource store (driven by
:mod:`broker.controlplane.store.migrate`)."""

# The newest revision in versions/. A start whose schema is already here skips Alembic
# (broker.controlplane.store.migrate.at_head); tests/integration/test_migrations.py checks that
# this is Alembic's head, so a new migration must update it.
HEAD = "0003"
