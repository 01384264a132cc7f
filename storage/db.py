"""One SQLite file per workspace: the engine, the session factory and schema upgrades.

SQLite runs in WAL mode with a busy timeout so a background job can write progress while the UI
reads, and with foreign keys on so deleting a project removes everything it owns. The schema comes
only from the Alembic migrations in `storage/migrations` (never `create_all`), so a fresh file and
an old one reach the same state.

This module knows nothing of torch or Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from storage.repository import mark_interrupted_jobs
from storage.workspace import Workspace, WorkspaceUnavailable, check_writable

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration's revision. An up-to-date database (every start but the first after an
# upgrade) is recognised from this alone, without importing Alembic (~0.3 s of start-up);
# tests/test_storage.py checks it is Alembic's head.
HEAD_REVISION = "0002"
BUSY_TIMEOUT_MS = 10_000

__all__ = [
    "Store",
    "WorkspaceUnavailable",
    "alembic_config",
    "create_engine_for",
    "mark_interrupted_jobs",
    "open_store",
    "session_factory",
    "upgrade_database",
]


def create_engine_for(path: Path) -> Engine:
    """An engine on the SQLite file at `path` (a file: WAL does not apply to `:memory:`)."""
    engine = create_engine(f"sqlite:///{Path(path)}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _set_pragmas)
    return engine


def _set_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (they are shown after the session ends)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection) -> Config:
    """An Alembic config for the bundled migrations, bound to an open connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def upgrade_database(engine: Engine) -> None:
    """Bring the database to the latest schema; a no-op on an up-to-date one."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    with engine.connect() as connection:
        # Foreign keys off while migrating: a batch migration rebuilds a table by dropping it,
        # which would otherwise cascade-delete the child rows. The pragma is ignored inside a
        # transaction, so it runs first, and it is restored before the connection is pooled.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            # The sqlite3 driver opens transactions only before INSERT/UPDATE/DELETE, so DDL would
            # autocommit piecemeal. An explicit BEGIN IMMEDIATE makes the whole upgrade one
            # transaction and makes a second process that starts at the same moment wait.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows with dangling foreign keys: {broken[:5]}")
        finally:
            connection.rollback()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def current_revision(engine: Engine) -> str | None:
    """The schema revision Alembic recorded in the database; None for a new database."""
    with engine.connect() as connection:
        exists = connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).first()
        if exists is None:
            return None
        row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        return row[0] if row else None


@dataclass(frozen=True)
class Store:
    """What a running app needs to persist. Open a transaction with `store.sessions.begin()`."""

    engine: Engine
    sessions: sessionmaker[Session]
    workspace: Workspace

    def close(self) -> None:
        self.engine.dispose()


def open_store(workspace_root: Path = Path("workspace")) -> Store:
    """Open (creating if needed) the workspace folder and its database, at the latest schema.

    WorkspaceUnavailable, saying why, when the folder cannot be written (read-only, full, a
    file in the way) or the database cannot be opened; nothing is written in that case."""
    workspace = Workspace(Path(workspace_root))
    check_writable(workspace.root)
    engine = create_engine_for(workspace.database_path)
    try:
        upgrade_database(engine)
    except DatabaseError as error:  # unwritable, full, or not a database at all
        engine.dispose()
        raise WorkspaceUnavailable(
            f"the database {str(workspace.database_path)!r} cannot be opened: "
            f"{error.orig if error.orig is not None else error}; check that the disk has space "
            "and the file is writable, or choose another folder with --workspace") from error
    return Store(engine=engine, sessions=session_factory(engine), workspace=workspace)
