"""Alembic migrations of the cemesh resource store (driven by :mod:`broker.store.migrate`)."""
