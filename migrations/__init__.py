"""Alembic migrations of the cemesh resource store (driven by
:mod:`broker.controlplane.store.migrate`)."""
