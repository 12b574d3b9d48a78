"""Alembic revisions, applied in order by `Database.start`."""
