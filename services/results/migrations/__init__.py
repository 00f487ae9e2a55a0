"""Alembic tree of the results database; run with ``python -m services.results migrate``."""
