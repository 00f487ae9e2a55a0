"""Alembic tree of the results database.

Run it with ``python -m services.results migrate``.
"""
