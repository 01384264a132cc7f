"""Long jobs: recorded in the store as they run, one at a time, stoppable.

`JobRunner.run` creates the job row, waits for the one "GPU" slot (a process-wide lock: Gradio's
concurrency group serialises events, and this also covers a worker thread that outlives its
browser event), marks it running, calls the work with a `JobProgress`, and ends the job as done,
failed or cancelled. `JobProgress` writes progress to the store at most twice a second and raises
`JobCancelled` as soon as it sees that someone (the Stop button, another tab) cancelled the job.

A job that fails is recorded with `describe_error(error)`: the message of a ValueError, or for a
full disk, an unwritable workspace, a GPU out of memory or a database error, what to do about it.

Knows the store and nothing of Gradio: the UI passes its progress bar in as a plain callable.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from diffubias.progress import part
from storage import Store, describe_os_error
from storage import repository as repo
from storage.models import JobStatus

log = logging.getLogger(__name__)
UiProgress = Callable[[float, str], None]


class JobCancelled(Exception):
    """The job was cancelled while it ran; nothing more of it is written."""


def describe_error(error: BaseException) -> str:
    """What a person should read when a job fails: the message of a ValueError, advice for
    failures of the machine (`machine_failure`), else the error's type and message for triage."""
    if isinstance(error, ValueError):
        return str(error)
    advice = machine_failure(error)
    if advice is not None:
        return advice
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def machine_failure(error: BaseException) -> str | None:
    """Advice for a failure of the machine rather than of the code (a full disk, an unwritable
    workspace, the GPU out of memory, a database that refuses writes); None for anything else."""
    if is_out_of_memory(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return ("the GPU ran out of memory" + (f" ({first})" if first else "") + ": lower the "
                "batch size, images per prompt or image size, choose --offload model, or free "
                "the GPU, then run the job again")
    if isinstance(error, OSError) and error.errno is not None:
        return f"could not write to the workspace: {describe_os_error(error)}"
    original = error.orig if isinstance(error, OperationalError) else error
    if isinstance(original, sqlite3.OperationalError):
        text = str(original)
        if "full" in text:
            return ("the database could not be written because the disk is full: free some "
                    "space and run the job again")
        if "readonly" in text or "read-only" in text:
            return ("the database is read-only: fix the workspace's permissions and restart "
                    "the app")
        return f"the database refused the write ({text}); run the job again"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or a RuntimeError saying so), told apart without torch."""
    return (type(error).__name__ == "OutOfMemoryError"
            or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower()))


def release_accelerator_memory() -> None:
    """After a failed job: drop its tensors and hand cached GPU memory back, so the next job
    starts from an empty GPU (a no-op where torch was never imported or there is no GPU)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class JobOutcome:
    """What a job's work returns: its result (stored as JSON) and stage timings in seconds."""

    result: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass
class JobProgress:
    """Progress of one running job: `progress(fraction, message)`, and `check()` before writes."""

    store: Store
    job_id: int
    ui: UiProgress | None = None
    interval_s: float = 0.5
    _last_write: float = field(default=0.0, init=False)

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.ui is not None:
            self.ui(fraction, message)
        now = time.monotonic()
        if now - self._last_write >= self.interval_s:
            self._last_write = now
            with self.store.sessions.begin() as session:
                status = repo.update_job_progress(session, self.job_id, fraction, message)
            if status == JobStatus.CANCELLED:
                raise JobCancelled(f"job {self.job_id} was stopped")

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled; call it before writing results."""
        with self.store.sessions() as session:
            job = repo.get_job(session, self.job_id)
            if job is not None and job.status == JobStatus.CANCELLED:
                raise JobCancelled(f"job {self.job_id} was stopped")

    def part(self, start: float, end: float) -> Callable[[float, str], None]:
        """A progress callback that maps [0, 1] onto [start, end] of this job's bar."""
        return part(self, start, end)


class JobRunner:
    """Runs jobs one at a time and records them; one per process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._slot = threading.Lock()

    def run(
        self,
        project_id: int,
        kind: str,
        params: Mapping[str, Any],
        work: Callable[[JobProgress], JobOutcome],
        *,
        ui: UiProgress | None = None,
    ) -> tuple[int, JobOutcome]:
        """Run `work` as a job of `kind`; returns (job id, outcome).

        Raises JobCancelled when the job was stopped, and re-raises whatever `work` raised after
        recording the job as failed with the message.
        """
        with self.store.sessions.begin() as session:
            job_id = repo.create_job(session, project_id, kind, params).id
        progress = JobProgress(self.store, job_id, ui)
        try:
            self._wait_for_slot(progress)
            try:
                outcome = self._run_started(job_id, work, progress)
            finally:
                self._slot.release()
        except JobCancelled:
            self._end(job_id, JobStatus.CANCELLED, error=None)
            raise
        except BaseException as error:
            self._end(job_id, JobStatus.FAILED, error=describe_error(error))
            if isinstance(error, Exception):
                release_accelerator_memory()
            raise
        return job_id, outcome

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Whether no job holds the slot, waiting up to `timeout_s` for the running one to end
        (a stopped job ends at its next progress update)."""
        if not self._slot.acquire(timeout=timeout_s):
            return False
        self._slot.release()
        return True

    def _run_started(self, job_id: int, work: Callable[[JobProgress], JobOutcome],
                     progress: JobProgress) -> JobOutcome:
        with self.store.sessions.begin() as session:
            repo.start_job(session, job_id)
        start = time.perf_counter()
        outcome = work(progress)
        timings = {**outcome.timings, "total": time.perf_counter() - start}
        with self.store.sessions.begin() as session:
            if repo.get_job(session, job_id).status == JobStatus.CANCELLED:
                raise JobCancelled(f"job {job_id} was stopped")
            repo.finish_job(session, job_id, JobStatus.DONE, result=outcome.result,
                            timings=timings)
        return JobOutcome(outcome.result, timings)

    def _wait_for_slot(self, progress: JobProgress) -> None:
        while not self._slot.acquire(timeout=0.5):
            progress(0.0, "waiting for the running job to finish")

    def _end(self, job_id: int, status: str, *, error: str | None) -> None:
        try:
            with self.store.sessions.begin() as session:
                job = repo.get_job(session, job_id)
                if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                    repo.finish_job(session, job_id, status, error=error)
        except Exception:  # e.g. the disk is full: the job's own error is the one to report
            log.exception("could not record job %d as %s", job_id, status)
