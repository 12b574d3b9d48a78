"""Alembic environment and revisions of the hub schema; shipped inside the `models` package."""
