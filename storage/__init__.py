"""Persistence for DiffuBias Studio: a SQLite database plus a workspace folder of files.

`open_store(root)` opens (or creates) `root/diffubias.sqlite` at the latest schema and returns a
`Store`; `storage.repository` holds the typed reads and writes, which never commit:

    store = open_store(Path("workspace"))
    with store.sessions.begin() as session:
        project = repository.create_project(session, name="waterbirds", ...)

Tables are in `storage.models`, schema migrations in `storage/migrations`, file paths in
`storage.workspace`, start-up recovery after a crash in `storage.recovery`. This package knows
nothing of torch or Gradio.
"""

from storage.db import Store, mark_interrupted_jobs, open_store
from storage.workspace import (
    Workspace,
    WorkspaceUnavailable,
    atomic_write_bytes,
    describe_os_error,
)

__all__ = ["Store", "Workspace", "WorkspaceUnavailable", "atomic_write_bytes",
           "describe_os_error", "mark_interrupted_jobs", "open_store"]
