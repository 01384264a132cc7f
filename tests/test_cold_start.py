"""Cold starts: the app started afresh again and again, the first actions of several tabs fired
at once while the library is still being imported (by them and by the warm-up thread). No job
fails and no request errors, in any start (ui.imports; tests/test_imports.py plants the race
itself)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.app_process import AppProcess, query, wait_for_project
from tests.ui_support import TINY_BIAS, link_demo_dataset

# 20 in the slow run (`DIFFUBIAS_COLD_STARTS=20`, as measured for issue 15); 3 in every suite run
COLD_STARTS = int(os.environ.get("DIFFUBIAS_COLD_STARTS", "3"))
IMPORT_RACE_WORDS = ("partially initialized", "deadlock detected", "circular import",
                     "ImportError", "Traceback")


@pytest.fixture(scope="module")
def prepared_workspace(tmp_path_factory, builtin_cache) -> Path:
    """The demo project imported and its biased model trained: every tab has something to show
    on the first request of the next start."""
    root = tmp_path_factory.mktemp("cold")
    workspace = root / "workspace"
    link_demo_dataset(builtin_cache, workspace)
    app = AppProcess(workspace, log_path=root / "prepare.log")
    try:
        client = app.client()
        project = wait_for_project(client)
        status = client.predict(project, *TINY_BIAS.values(), api_name="/train_biased")[0]
        assert status.startswith("✓"), status
    finally:
        app.stop()
    return workspace


def _first_actions(client, project: int) -> dict[str, object]:
    """What a user's first clicks after a restart send, all at once: a job, the views of four
    tabs and two more jobs queued behind the first."""
    calls = {
        "train_biased": lambda: client.predict(project, *TINY_BIAS.values(),
                                               api_name="/train_biased")[0],
        "candidates_page": lambda: client.predict(1, project, -1, 48,
                                                  api_name="/candidates_page"),
        "candidate_list": lambda: client.predict(project, api_name="/candidate_list"),
        "generated_list": lambda: client.predict(project, api_name="/generated_list"),
        "cam_page": lambda: client.predict(1, project, api_name="/cam_page"),
        "export_report": lambda: client.predict(project, api_name="/export_report")[0],
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: _outcome(future) for name, future in futures.items()}


def _outcome(future):
    try:
        return future.result(timeout=600)
    except Exception as error:  # the test reports every failure of a start together
        return error


def test_cold_starts_with_concurrent_first_actions_fail_no_job(prepared_workspace, tmp_path):
    for start in range(COLD_STARTS):
        workspace = tmp_path / f"start-{start}" / "workspace"
        shutil.copytree(prepared_workspace, workspace, symlinks=True)
        app = AppProcess(workspace, log_path=tmp_path / f"start-{start}.log")
        try:
            client = app.client()
            project = wait_for_project(client)
            outcomes = _first_actions(client, project)
        finally:
            app.stop()
        errors = {name: repr(o) for name, o in outcomes.items() if isinstance(o, Exception)}
        assert not errors, f"start {start}: {errors}\n{app.log()[-3000:]}"
        assert str(outcomes["train_biased"]).startswith("✓"), outcomes["train_biased"]
        failed = query(workspace, "SELECT kind, error FROM jobs WHERE status = 'failed'")
        assert not failed, f"start {start}: {[tuple(row) for row in failed]}"
        log = app.log()
        assert not [w for w in IMPORT_RACE_WORDS if w in log], f"start {start}:\n{log[-3000:]}"
