"""Durable state of the hub: tables, migrations, queries and the grouped event writer.

Nothing here knows about sockets or the wire protocol. SQLite (through aiosqlite) is the
default store; PostgreSQL (through asyncpg) is used when a `postgresql://` URL is configured,
which is what lets several hub nodes share one view of users, links, sessions and events.
"""
