"""Jobs: recorded as they run, one at a time, stopped by a cancelled status."""

from __future__ import annotations

import threading
import time

import pytest

from storage import open_store
from storage import repository as repo
from storage.models import JobStatus
from ui.jobs import JobCancelled, JobOutcome, JobProgress, JobRunner


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "workspace")
    yield store
    store.close()


@pytest.fixture
def project_id(store):
    with store.sessions.begin() as session:
        return repo.create_project(session, name="p", source="test", class_names=["a", "b"],
                                   image_size=8).id


def job(store, job_id):
    with store.sessions() as session:
        return repo.get_job(session, job_id)


def test_a_job_records_progress_result_and_timings(store, project_id):
    seen, stored = [], []

    def work(progress: JobProgress) -> JobOutcome:
        stored.append(job(store, progress.job_id).status)
        progress(0.5, "half way")
        stored.append(job(store, progress.job_id).message)
        return JobOutcome({"answer": 42}, {"step": 0.1})

    job_id, outcome = JobRunner(store).run(project_id, "evaluate", {"k": 1}, work,
                                           ui=lambda f, m: seen.append((f, m)))
    done = job(store, job_id)
    assert stored == [JobStatus.RUNNING, "half way"] and seen == [(0.5, "half way")]
    assert (done.status, done.progress, done.result, done.params) == ("done", 1.0,
                                                                      {"answer": 42}, {"k": 1})
    assert set(done.timings) == {"step", "total"} and outcome.timings["total"] >= 0


def test_a_failing_job_keeps_the_message_and_re_raises(store, project_id):
    def work(progress):
        raise ValueError("dataset has no train split")

    with pytest.raises(ValueError, match="no train split"):
        JobRunner(store).run(project_id, "evaluate", {}, work)
    with store.sessions() as session:
        failed = repo.latest_job(session, project_id, "evaluate", status=None)
    assert failed.status == JobStatus.FAILED and failed.error == "dataset has no train split"


def test_a_cancelled_job_stops_at_its_next_progress_update(store, project_id):
    steps = []

    def work(progress):
        with store.sessions.begin() as session:
            repo.cancel_job(session, progress.job_id)  # as the Stop button does
        for i in range(100):
            progress(i / 100, "working")
            steps.append(i)
        return JobOutcome()

    runner = JobRunner(store)
    with pytest.raises(JobCancelled):
        runner.run(project_id, "evaluate", {}, work)
    assert steps == []  # the first write saw the cancellation
    with store.sessions() as session:
        assert repo.latest_job(session, project_id, "evaluate", status=None).status == "cancelled"
    # the slot was released: the next job runs
    assert runner.run(project_id, "evaluate", {}, lambda p: JobOutcome())[1].result == {}


def test_progress_writes_are_throttled_but_check_sees_a_cancellation(store, project_id):
    with store.sessions.begin() as session:
        job_id = repo.create_job(session, project_id, "evaluate").id
        repo.start_job(session, job_id)
    progress = JobProgress(store, job_id, interval_s=60)
    progress(0.1, "first")  # written
    progress(0.2, "second")  # within the interval: not written
    assert (job(store, job_id).progress, job(store, job_id).message) == (0.1, "first")
    with store.sessions.begin() as session:
        repo.cancel_job(session, job_id)
    progress(0.3, "third")  # throttled: does not look
    with pytest.raises(JobCancelled):
        progress.check()


def test_jobs_run_one_at_a_time(store, project_id):
    runner = JobRunner(store)
    running, overlaps = [], []

    def work(progress):
        running.append(1)
        overlaps.append(len(running))
        time.sleep(0.3)
        running.pop()
        return JobOutcome()

    threads = [threading.Thread(target=runner.run, args=(project_id, "evaluate", {}, work))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1]
    with store.sessions() as session:
        assert [j.status for j in repo.list_jobs(session, project_id)] == ["done"] * 3


def test_failures_of_the_machine_are_described_as_what_to_do():
    import errno
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from ui.jobs import describe_error

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError, without a GPU
        pass

    full = OSError(errno.ENOSPC, "No space left on device", "generated/3/a.png")
    assert describe_error(full) == (
        "could not write to the workspace: the disk is full (generated/3/a.png): free some space "
        "(or move the workspace with --workspace) and run it again")
    assert "not writable" in describe_error(PermissionError(errno.EACCES, "Permission denied"))
    assert describe_error(OutOfMemoryError("CUDA out of memory. Tried")).startswith(
        "the GPU ran out of memory (CUDA out of memory. Tried): lower the batch size")
    database_full = OperationalError("INSERT", {}, sqlite3.OperationalError(
        "database or disk is full"))
    assert "disk is full" in describe_error(database_full)
    assert describe_error(ValueError("no prompts")) == "no prompts"
    assert describe_error(KeyError("x")) == "KeyError: 'x'"


def test_a_job_that_cannot_be_recorded_still_reports_its_own_error(store, project_id,
                                                                    monkeypatch):
    runner = JobRunner(store)

    def work(progress):
        monkeypatch.setattr(repo, "finish_job", lambda *a, **k: 1 / 0)  # the store is gone
        raise ValueError("the real problem")

    with pytest.raises(ValueError, match="the real problem"):
        runner.run(project_id, "evaluate", {}, work)
    monkeypatch.undo()  # the store is back: the slot was released, the next job runs
    assert runner.run(project_id, "evaluate", {}, lambda p: JobOutcome())[1].result == {}


def test_the_banner_shows_why_a_job_was_interrupted_and_escapes_it():
    from ui.header import banner_html
    from ui.studio import JobStatusView

    view = JobStatusView(7, "Generate images", "interrupted", 0.4, "", "the app stopped <b>; "
                         "run it again", None, None)
    page = banner_html(view)
    assert "interrupted" in page and "run it again" in page and "<b>;" not in page
