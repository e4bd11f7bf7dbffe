"""Alembic environment shipped inside the package: no alembic.ini at runtime.

``twingraph.stores.metadata.migrate`` builds the ``Config`` in code and passes an open
connection (already inside a transaction that holds the migration lock) in
``config.attributes["connection"]``; the whole upgrade then commits or rolls back as one.
Offline (``--sql``) mode uses ``config.attributes["url"]``.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from twingraph.stores.metadata.schema import metadata

config = context.config
OPTIONS: dict[str, Any] = {
    "target_metadata": metadata,
    "transactional_ddl": True,     # SQLite too: a failed upgrade leaves no half-made schema
    "render_as_batch": True,       # SQLite cannot ALTER most things; batch mode copies tables
    "compare_type": True,
}


def run_offline() -> None:
    context.configure(url=config.attributes["url"], literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through twingraph.stores.metadata.migrate.upgrade()")
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
