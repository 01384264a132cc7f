"""Alembic environment for the store. Run through `storage.db.upgrade_database`, which passes an
open connection in `config.attributes["connection"]`; there is no alembic.ini and no URL here.
"""

from alembic import context

from storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through storage.db.upgrade_database (needs a connection)")

# render_as_batch: SQLite can only ALTER by rebuilding a table, which batch mode does.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
