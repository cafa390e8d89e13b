"""Alembic environment: the connection is handed in by hubmirror.catalog.migrate().

SQLite cannot ALTER most of a table, so its migrations go through batch mode (copy and move);
PostgreSQL alters in place, and runs every migration inside the caller's transaction.
"""

from alembic import context

from hubmirror.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
