"""Alembic environment: the connection is handed in by hubmirror.catalog.migrate()."""

from alembic import context

from hubmirror.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
