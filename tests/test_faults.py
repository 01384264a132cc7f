"""Faults: the app killed with SIGKILL during each long job, a workspace that cannot be written,
a disk that fills up during a job, and jobs that fail (missing model, broken captioner, GPU out
of memory). After each, the store is consistent, finished work is intact, the interrupted job
says so and runs again (generation resumes without duplicates), and the app keeps serving."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client

from storage import WorkspaceUnavailable, open_store
from storage.workspace import JOB_FOLDERS
from tests.app_process import REPO, AppProcess, query, read_db, wait_for_project
from tests.tiny_models import build_tiny_blip
from tests.ui_support import TINY_BIAS, launch, link_demo_dataset

KILL_DEADLINE_S = 120
# Generation sized to take a few seconds on a busy 2-core machine: every kept prompt, 2 images
# (the /generate API's parameters, in order).
RESUMABLE_GENERATION = {"generator": "oracle-renderer", "model_id": "", "gen_steps": 25,
                        "guidance_scale": 7.5, "images_per_prompt": 2, "seed": 0,
                        "max_images": 0}
# 100 prompts of 2 images: several stored batches of 32 prompts
GENERATION_200 = {"generator": "oracle-renderer", "images_per_prompt": 2, "max_images": 200, "seed": 7}


# -- helpers -----------------------------------------------------------------------------------


def latest_job(workspace: Path, kind: str):
    rows = query(workspace, "SELECT * FROM jobs WHERE kind = ? ORDER BY id DESC LIMIT 1", kind)
    return rows[0] if rows else None


def kill_during(app: AppProcess, kind: str, after_job: int, ready) -> dict:
    """SIGKILL the app once a job of `kind` newer than `after_job` runs and `ready(row)`."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        job = latest_job(app.workspace, kind)
        if job is not None and job["id"] > after_job:
            if job["status"] == "running" and ready(job):
                app.kill()
                return {"kind": kind, "job_id": job["id"], "progress": job["progress"],
                        "message": job["message"]}
            assert job["status"] in ("queued", "running"), (
                f"the {kind} job ended ({job['status']}: {job['error']}) before it was killed")
        time.sleep(0.03)
    app.kill()
    raise AssertionError(f"no running {kind} job to kill within {KILL_DEADLINE_S} s")


def max_job_id(workspace: Path) -> int:
    return query(workspace, "SELECT COALESCE(MAX(id), 0) FROM jobs")[0][0]


def referenced_files(workspace: Path) -> dict[str, str]:
    """sha256 of every file a row points at (weights, generated images)."""
    paths = [r[0] for r in query(workspace, "SELECT weights_path FROM models UNION ALL "
                                            "SELECT path FROM generated_images")]
    return {p: hashlib.sha256((workspace / p).read_bytes()).hexdigest() for p in paths}


def row_counts(workspace: Path) -> dict[str, int]:
    """Rows per finished job: what an interruption must never change."""
    return {f"{table}:{job}": n for table in ("scores", "captions", "models", "generated_images")
            for job, n in query(workspace, f"SELECT t.job_id, COUNT(*) FROM {table} t JOIN jobs j "
                                           "ON j.id = t.job_id WHERE j.status = 'done' "
                                           "GROUP BY t.job_id")}


def assert_consistent(workspace: Path) -> None:
    connection = read_db(workspace)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        active = connection.execute(
            "SELECT id, kind FROM jobs WHERE status IN ('queued', 'running')").fetchall()
        assert [tuple(a) for a in active] == []
        referenced = {r[0] for r in connection.execute(
            "SELECT weights_path FROM models UNION SELECT path FROM generated_images")}
    finally:
        connection.close()
    assert all((workspace / p).is_file() for p in referenced), "a row points at a missing file"
    for kind in JOB_FOLDERS:
        files = [p for p in (workspace / kind).rglob("*") if p.is_file()]
        assert not [p for p in files if p.name.endswith(".tmp")], f"temp files left in {kind}/"
        if kind in ("weights", "generated"):
            stray = [p for p in files if p.relative_to(workspace).as_posix() not in referenced]
            assert not stray, f"files no row points at: {stray[:3]}"


def restart_after_kill(app: AppProcess, killed: dict, before: dict[str, str],
                       counts: dict[str, int], tmp_path: Path) -> tuple[AppProcess, Client]:
    """Restart on the same workspace and check what the kill left."""
    workspace = app.workspace
    again = AppProcess(workspace, "--no-demo", log_path=tmp_path / "app.log")
    client = again.client()
    job = query(workspace, "SELECT * FROM jobs WHERE id = ?", killed["job_id"])[0]
    assert job["status"] == "interrupted" and "run it again" in job["error"]
    assert "interrupted" in client.predict(api_name="/open_page")[2].lower()
    assert_consistent(workspace)
    after = referenced_files(workspace)
    assert {p: after.get(p) for p in before} == before, "a finished artifact changed"
    assert {k: v for k, v in row_counts(workspace).items() if k in counts} == counts
    return again, client


# -- SIGKILL during each long job ---------------------------------------------------------------


def test_sigkill_during_each_long_job_loses_nothing(tmp_path, builtin_cache):
    workspace = tmp_path / "workspace"
    link_demo_dataset(builtin_cache, workspace)
    blip = str(build_tiny_blip(tmp_path / "tiny-blip"))  # a real (tiny) model: captioning lasts
    app = AppProcess(workspace, log_path=tmp_path / "app.log")
    kills = []
    try:
        client = app.client()
        project = wait_for_project(client)
        caption_args = (project, "metadata", blip, 3, "", 0, "", 10)
        generate_args = (project, *RESUMABLE_GENERATION.values())
        stages = [
            ("biased_train", "/train_biased", (project, *TINY_BIAS.values()), {},
             lambda job: job["progress"] > 0.05),
            ("caption", "/run_captioner", caption_args, {},
             lambda job: job["message"].startswith("captioning")),
            # after the first batch of images is stored, before the last
            ("generate", "/generate", generate_args, {},
             lambda job: query(workspace, "SELECT COUNT(*) FROM generated_images WHERE "
                                          "job_id = ?", job["id"])[0][0] > 0),
            ("debias", "/train_debiased", (),
             {"project_id": project, "debias_epochs": 1, "train_vanilla": True},
             lambda job: job["progress"] > 0.05),
            # short jobs: killed as soon as they run (every conflicting test image is explained)
            ("gradcam", "/run_gradcam", (project, "gradcam", "conflicting", 2000), {},
             lambda job: True),
            ("export", "/export_report", (project,), {}, lambda job: True),
        ]
        for kind, api, args, kwargs, ready in stages:
            before, counts = referenced_files(workspace), row_counts(workspace)
            newest = max_job_id(workspace)
            client.submit(*args, api_name=api, **kwargs)
            killed = kill_during(app, kind, newest, ready)
            stored_images = query(workspace, "SELECT COUNT(*) FROM generated_images")[0][0]
            app, client = restart_after_kill(app, killed, before, counts, tmp_path)
            kills.append(killed)

            # the same request again finishes the job
            status = client.predict(*args, api_name=api, **kwargs)[0]
            assert status.startswith("✓"), status
            assert_consistent(workspace)
            if kind == "generate":
                # resumed: what the killed job stored is kept, nothing is made twice
                result = latest_job(workspace, "generate")
                assert _json(result["result"])["n_kept"] == stored_images > 0
                rows = query(workspace, "SELECT prompt_id, seed FROM generated_images")
                n_prompts = _json(result["result"])["n_prompts"]
                assert len(rows) == len(set(map(tuple, rows))) == 2 * n_prompts
                assert len([p for p in (workspace / "generated").rglob("*.png")]) == len(rows)
                killed["resumed"] = f"{stored_images} kept + {len(rows) - stored_images} new"
        print("\nkilled:", [(k["kind"], round(k["progress"], 2), k.get("resumed")) for k in kills])
    finally:
        app.stop()
    assert [k["kind"] for k in kills] == ["biased_train", "caption", "generate", "debias",
                                          "gradcam", "export"]
    assert "database is locked" not in app.log()


def _json(text: str) -> dict:
    import json

    return json.loads(text)


# -- a workspace that cannot be written ----------------------------------------------------------


def test_a_workspace_behind_a_file_stops_the_app_with_a_clear_message(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    done = subprocess.run([sys.executable, "app.py", "--workspace", str(blocker / "workspace")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "error: the workspace" in done.stderr and "a file is in the way" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("code, words", [(errno.EACCES, "not writable"),
                                         (errno.EROFS, "not writable"),
                                         (errno.ENOSPC, "the disk is full")])
def test_an_unwritable_workspace_is_refused_before_any_write(tmp_path, monkeypatch, code, words):
    workspace = tmp_path / "workspace"
    open_store(workspace).close()
    database = (workspace / "diffubias.sqlite").read_bytes()

    def refuse(path, data):
        raise OSError(code, "refused", str(path))

    monkeypatch.setattr("storage.workspace.atomic_write_bytes", refuse)
    with pytest.raises(WorkspaceUnavailable, match=words):
        open_store(workspace)
    assert (workspace / "diffubias.sqlite").read_bytes() == database


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "diffubias.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(WorkspaceUnavailable, match="cannot be opened: file is not a database"):
        open_store(workspace)


# -- jobs that fail: the job ends with a message, the app keeps serving -------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, builtin_cache):
    """The app in this process (so faults can be planted) with a scored and captioned demo."""
    workspace = tmp_path_factory.mktemp("faults") / "workspace"
    link_demo_dataset(builtin_cache, workspace)
    studio, server, url = launch(workspace)
    client = Client(url, verbose=False, download_files=False)
    project = wait_for_project(client)
    client.predict(project, *TINY_BIAS.values(), api_name="/train_biased")
    client.predict(project, "metadata", "", 3, "", 0, "", 10, api_name="/run_captioner")
    yield studio, client, project
    server.close()
    studio.close()


def last_failure(studio, kind: str):
    from storage import repository as repo

    with studio.store.sessions() as session:
        project = repo.most_recent_project_id(session)
        return repo.latest_job(session, project, kind, status="failed")


class BrokenCaptioner:
    backend = "broken"

    def caption(self, ds, positions):
        raise RuntimeError("captioner crashed on its first batch")


class OutOfMemoryGenerator:
    backend = "diffusers"

    def describe(self):
        return {"backend": self.backend, "model": "test/oom-generator", "params": {}}

    def generate_items(self, items, **kwargs):
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, as the protocol asks


def test_failing_jobs_end_with_a_message_and_the_app_keeps_serving(served, monkeypatch):
    studio, client, project = served
    cases = [
        ("caption", "/run_captioner", (project, "metadata", "no-such-org/no-such-captioner", 3,
                                       "", 0, "", 10), "not in the Hugging Face cache"),
        ("generate", "/generate", (project, "oracle-renderer", "no-such-org/no-such-generator", 25, 7.5, 1,
                                   0, 4), "not in the Hugging Face cache"),
        ("caption", "/run_captioner", (project, "metadata", "test/broken-captioner", 3, "", 0,
                                       "", 10),
         "RuntimeError: captioner crashed on its first batch"),
        ("generate", "/generate", (project, "oracle-renderer", "test/oom-generator", 25, 7.5, 1, 0, 4),
         "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): lower"),
    ]
    monkeypatch.setattr("diffubias.backends.make_captioner",
                        _only("test/broken-captioner", BrokenCaptioner))
    monkeypatch.setattr("diffubias.backends.make_generator",
                        _only("test/oom-generator", OutOfMemoryGenerator))
    for kind, api, args, message in cases:
        with pytest.raises(Exception) as raised:
            client.predict(*args, api_name=api)
        assert message.lower() in str(raised.value).lower()
        failed = last_failure(studio, kind)
        assert message in failed.error and failed.finished_at is not None
        # still serving: the page answers and shows the failure
        assert "Failed" in client.predict(api_name="/open_page")[2]
    # and the GPU slot is free: a good job runs at once
    status = client.predict(project, "oracle-renderer", "", 25, 7.5, 1, 0, 4, api_name="/generate")[0]
    assert status.startswith("✓ 4 images")


def _only(name: str, fake):
    """A make_captioner / make_generator stand-in: the fake for `name`, else the real one."""
    import diffubias.backends

    real = (diffubias.backends.make_captioner if fake is BrokenCaptioner
            else diffubias.backends.make_generator)

    def make(requested, **kwargs):
        return fake() if requested == name else real(requested, **kwargs)

    return make


def test_a_full_disk_during_generation_fails_the_job_and_a_rerun_resumes(served, monkeypatch):
    from storage import repository as repo
    from storage.recovery import recover
    from ui import generate_service

    studio, _, project = served
    real_write = generate_service.atomic_write_bytes
    writes = []

    def fill_up(path, data):
        if len(writes) >= 70:  # past the first stored batch (64 images: commit_every)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        writes.append(path)
        real_write(path, data)

    monkeypatch.setattr(generate_service, "atomic_write_bytes", fill_up)
    with pytest.raises(OSError):
        generate_service.run_generation(studio, project, GENERATION_200)
    failed = last_failure(studio, "generate")
    assert failed.error.startswith("could not write to the workspace: the disk is full")
    workspace = studio.store.workspace.root
    with studio.store.sessions() as session:
        stored = repo.list_generated_images(session, job_id=failed.id)
    assert len(stored) == 64 and all((workspace / im.path).is_file() for im in stored)
    # the images written after the last stored batch are strays until the next start
    assert recover(studio.store).removed and not recover(studio.store).removed
    assert_consistent(workspace)

    monkeypatch.setattr(generate_service, "atomic_write_bytes", real_write)
    generate_service.run_generation(studio, project, GENERATION_200)
    with studio.store.sessions() as session:
        done = repo.latest_job(session, project, "generate")
    assert done.result["n_kept"] == 64 and done.result["n_new"] + 64 == done.result["n_images"]
    assert_consistent(workspace)
