"""Tests for `storage` below the repository: schema and migrations, SQLite settings, rows that
survive a restart, the workspace, and what importing the package loads.

The repository's own round trips are in tests/test_repository.py. Each test gets a fresh SQLite
file under tmp_path; nothing here needs torch or a GPU.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from storage import Store, Workspace, atomic_write_bytes, open_store
from storage import repository as repo
from storage.db import create_engine_for, upgrade_database
from storage.models import Base, Job, Project

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "projects",
    "samples",
    "jobs",
    "scores",
    "captions",
    "prompts",
    "generated_images",
    "models",
    "alembic_version",
}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(tmp_path / "workspace")
    yield store
    store.close()


def add_project(session: Session, n_samples: int = 20) -> Project:
    """A project of `n_samples` train samples: rows for the tests below to find again."""
    project = repo.create_project(session, name="waterbirds", source="/data/waterbirds",
                                  class_names=["class0", "class1"], image_size=64)
    rows = ({"position": i, "path": f"images/{i:06d}.png", "split": "train", "label": i % 2}
            for i in range(n_samples))
    repo.add_samples(session, project.id, rows)
    return project


# --- schema, migrations, SQLite settings ---------------------------------------------------


def test_open_store_creates_every_table_on_a_fresh_file(tmp_path: Path):
    store = open_store(tmp_path / "fresh")
    assert store.workspace.database_path == tmp_path / "fresh" / "diffubias.sqlite"
    assert store.workspace.database_path.is_file()
    assert set(inspect(store.engine).get_table_names()) == TABLES
    with store.engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0002"
    store.close()


def test_migrated_schema_matches_the_models(store: Store):
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_on_an_existing_database_is_a_no_op_that_keeps_rows(store: Store):
    with store.sessions.begin() as session:
        add_project(session, n_samples=7)
    upgrade_database(store.engine)
    upgrade_database(create_engine_for(store.workspace.database_path))
    with store.sessions() as session:
        assert repo.get_project_by_name(session, "waterbirds") is not None
        assert repo.count_samples(session, 1) == 7


def test_restart_finds_everything_as_it_was(tmp_path: Path):
    store = open_store(tmp_path / "ws")
    with store.sessions.begin() as session:
        project = add_project(session)
        job = repo.create_job(session, project.id, "score")
        positions = repo.sample_ids_by_position(session, project.id)
        losses = {sample_id: position / 10 for position, sample_id in positions.items()}
        repo.add_scores(session, job.id, ({"sample_id": i, "loss": x} for i, x in losses.items()))
        repo.finish_job(session, job.id, "done", result={"k": 3})
    store.close()

    reopened = open_store(tmp_path / "ws")
    with reopened.sessions() as session:
        project = repo.get_project_by_name(session, "waterbirds")
        assert project is not None and project.class_names == ["class0", "class1"]
        assert project.created_at.tzinfo == UTC
        assert repo.latest_job(session, project.id, "score").result == {"k": 3}
        scores = repo.list_scores(session, job.id)
        assert {score.sample_id: score.loss for score in scores} == losses and len(losses) == 20
    reopened.close()


def test_upgrading_a_0001_database_keeps_every_row_and_fills_score_bias(tmp_path: Path):
    from alembic import command

    from storage.db import alembic_config

    engine = create_engine_for(tmp_path / "old.sqlite")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.exec_driver_sql(
            "INSERT INTO projects VALUES (1, 'old', 'x', '2026-01-01 00:00:00', '[\"a\", \"b\"]', "
            "'[]', 8, '{}')")
        connection.exec_driver_sql(
            "INSERT INTO samples VALUES (1, 1, 0, 'images/0.png', 'train', 0, 1, NULL), "
            "(2, 1, 1, 'images/1.png', 'train', 1, NULL, NULL)")
        connection.exec_driver_sql(
            "INSERT INTO jobs VALUES (1, 1, 'biased_train', '{}', 'done', 1.0, '', NULL, "
            "'2026-01-01 00:00:00', NULL, NULL, '{}', '{}')")
        connection.exec_driver_sql(
            "INSERT INTO scores VALUES (1, 1, 1, 0, 2.5, 1, 0, 0), (2, 1, 2, 1, 0.1, 0, NULL, 0)")
    upgrade_database(engine)
    with Session(engine) as session:
        columns = repo.score_columns(session, 1)
        assert sorted(zip(columns.losses, columns.biases)) == [(0.1, None), (2.5, 1)]
        assert repo.get_project(session, 1).name == "old"
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0002"
    engine.dispose()


def test_connections_use_wal_busy_timeout_and_foreign_keys(store: Store):
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_second_engine_reads_and_waits_to_write_while_the_first_writes(store: Store):
    with store.sessions.begin() as session:
        add_project(session)
    other = create_engine_for(store.workspace.database_path)
    writer = store.sessions()
    writer.begin()
    repo.create_job(writer, 1, "caption")  # holds the write lock until commit

    with Session(other) as reader:  # WAL: readers see the last commit, never wait
        assert reader.scalar(select(func.count()).select_from(Job)) == 0

    release = threading.Timer(0.3, writer.commit)
    release.start()
    with Session(other) as second_writer, second_writer.begin():  # busy timeout: waits, no error
        repo.create_job(second_writer, 1, "generate")
    release.join()
    writer.close()
    with Session(other) as reader:
        assert reader.scalars(select(Job.kind).order_by(Job.id)).all() == ["caption", "generate"]
    other.dispose()


# --- workspace -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "images/../../x", "/etc/passwd", "", ".", "images/.."])
def test_workspace_resolve_refuses_paths_outside_the_root(tmp_path: Path, bad: str):
    with pytest.raises(ValueError):
        Workspace(tmp_path).resolve(bad)


def test_workspace_paths_round_trip(tmp_path: Path):
    workspace = Workspace(tmp_path)
    path = workspace.path_for("generated", 12, "0001.png")
    assert path == tmp_path / "generated" / "12" / "0001.png"
    assert workspace.relative(path) == "generated/12/0001.png"
    assert workspace.resolve("generated/12/0001.png") == path
    assert workspace.resolve("images/./a/../b.png") == tmp_path / "images" / "b.png"
    with pytest.raises(ValueError, match="unknown workspace kind"):
        workspace.path_for("tmp", "x")
    with pytest.raises(ValueError, match="not inside"):
        workspace.relative(tmp_path.parent / "elsewhere.png")


def test_atomic_write_bytes_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "weights" / "model.safetensors"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]


# --- layering ------------------------------------------------------------------------------


def test_importing_storage_loads_no_torch_gradio_or_numpy():
    heavy = ("torch", "gradio", "numpy", "diffusers", "transformers")
    code = (
        "import storage, sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"


def test_head_revision_is_alembics_head_and_an_up_to_date_start_skips_alembic(tmp_path: Path):
    """open_store recognises an up-to-date database from HEAD_REVISION alone; a new migration
    must update it, or every start would take the database for an old one."""
    import subprocess
    import sys

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.db import HEAD_REVISION, MIGRATIONS_DIR, current_revision

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    store = open_store(tmp_path / "ws")
    assert current_revision(store.engine) == HEAD_REVISION
    store.close()
    code = ("import sys; from pathlib import Path; from storage import open_store; "
            f"open_store(Path({str(tmp_path / 'ws')!r})).close(); "
            "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
