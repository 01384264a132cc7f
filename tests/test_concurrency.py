"""Load: eight API clients (eight browser sessions) on one app process, each with its own project,
all at once. GPU jobs run one at a time through the queue, reads answer within a bound while
jobs run, nothing fails with "database is locked", and no project's data shows up in another."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from datetime import datetime

from gradio_client import handle_file

from tests.app_process import AppProcess, query
from tests.ui_support import TINY_BIAS, link_demo_dataset, make_dataset_zip

CLIENTS = 8
READ_BOUND_S = 15.0  # every read, on a busy 2-core machine, while GPU jobs queue and run
TEST_BOUND_S = 240


def run_client(app: AppProcess, index: int, archive, result: dict, everyone: threading.Barrier):
    client = app.client()
    latencies, errors = [], []

    def read(api: str, *args):
        start = time.monotonic()
        out = client.predict(*args, api_name=api)
        latencies.append(time.monotonic() - start)
        return out

    def run_job_while_reading(api: str, *args, others: list[int]) -> tuple:
        job = client.submit(*args, api_name=api)
        n = 0
        while not job.done():
            read("/candidates_page", 1, others[n % len(others)], -1, 24)  # a shared read
            read("/candidate_list", result["project"], -1, 1, 10)  # this session's project
            n += 1
        return job.result()

    try:
        _, project, _ = client.predict(handle_file(str(archive)), f"client {index}",
                                             api_name="/import_zip")
        result["project"] = int(project)
        everyone.wait(timeout=TEST_BOUND_S)  # all projects exist before any job starts
        others = [p for p in result["all_projects"]() if p != result["project"]]
        settings = {**TINY_BIAS, "biased_epochs": 2}
        status = run_job_while_reading("/train_biased", result["project"], *settings.values(),
                                       others=others)[0]
        assert status.startswith("✓ Trained and scored"), status
        status = run_job_while_reading("/run_captioner", result["project"], "metadata", "", 2,
                                       "", 0, "", 0, others=others)[0]
        assert "captions of" in status, status
        result["candidates"] = [row["sample_id"] for row in
                                read("/candidate_list", result["project"], -1, 1, 200)]
    except Exception as error:  # noqa: BLE001 (reported by the test with every client's errors)
        errors.append(f"client {index}: {type(error).__name__}: {error}")
    result.update(latencies=latencies, errors=errors)


def test_eight_sessions_at_once(tmp_path, builtin_cache):
    demo = link_demo_dataset(builtin_cache, tmp_path / "datasets")
    archives = [make_dataset_zip(tmp_path / f"set{i}.zip", demo,
                                 per_class={"train": 3 + i % 3, "valid": 1, "test": 1})
                for i in range(CLIENTS)]
    workspace = tmp_path / "workspace"
    app = AppProcess(workspace, "--no-demo", log_path=tmp_path / "app.log")
    results = [{} for _ in range(CLIENTS)]
    for result in results:
        result["all_projects"] = lambda: [r["project"] for r in results]
    everyone = threading.Barrier(CLIENTS)
    threads = [threading.Thread(target=run_client, args=(app, i, archives[i], results[i],
                                                         everyone), daemon=True)
               for i in range(CLIENTS)]
    start = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, TEST_BOUND_S - (time.monotonic() - start)))
        took = time.monotonic() - start
        assert not any(thread.is_alive() for thread in threads), "a client is still waiting"
    finally:
        app.stop()
    errors = [e for r in results for e in r.get("errors", [])]
    assert errors == []
    assert "database is locked" not in app.log() and "Traceback" not in app.log()

    # GPU jobs ran one at a time: each started after the previous one ended
    jobs = query(workspace, "SELECT id, kind, project_id, started_at, finished_at, status "
                            "FROM jobs WHERE kind IN ('biased_train', 'caption') "
                            "ORDER BY started_at")
    assert len(jobs) == 2 * CLIENTS and {j["status"] for j in jobs} == {"done"}
    spans = [(datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
             for j in jobs]
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))

    # reads stayed responsive while those jobs queued and ran
    latencies = [t for r in results for t in r["latencies"]]
    assert latencies and max(latencies) < READ_BOUND_S

    # no project's data in another: what each session saw, and every row in the store
    projects = {r["project"] for r in results}
    assert len(projects) == CLIENTS
    for result in results:
        own = {row[0] for row in query(workspace, "SELECT id FROM samples WHERE project_id = ?",
                                       result["project"])}
        assert result["candidates"] and set(result["candidates"]) <= own
    for table in ("scores", "captions"):
        crossed = query(workspace, f"SELECT COUNT(*) FROM {table} t JOIN jobs j ON j.id = "
                                   "t.job_id JOIN samples s ON s.id = t.sample_id "
                                   "WHERE s.project_id != j.project_id")[0][0]
        assert crossed == 0, f"{table} rows point at another project's samples"
    crossed = query(workspace, "SELECT COUNT(*) FROM prompts p JOIN samples s ON s.id = "
                               "p.sample_id WHERE s.project_id != p.project_id")[0][0]
    assert crossed == 0
    print(f"\n{CLIENTS} clients, {len(jobs)} GPU jobs serialised, {len(latencies)} reads: "
          f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s; "
          f"{took:.0f} s in all")
