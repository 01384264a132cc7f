"""The app's per-process state and the questions every tab asks: which projects exist, which job
is running, and how to stop it.

`Studio` holds the store, the dataset cache, the job runner and the data root; handlers take it as
their first argument. `Studio.open` makes first imports safe across the app's threads
(ui.imports), marks jobs a previous process left running as interrupted and removes their
partial files;
`start_background_work`, called once the page is served, prepares the demo project on a workspace
without projects and imports the library, so the page is usable at once. No Gradio here:
functions return plain values.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from storage import Store, open_store
from storage import repository as repo
from storage.models import ACTIVE_STATUSES, Job
from storage.recovery import recover
from ui.datasets import (
    DEMO_CONFLICT_RATIO,
    DEMO_NAME,
    DEMO_SOURCE,
    DatasetCache,
    import_builtin,
)
from ui.imports import serialise_imports, start_warm_up
from ui.jobs import JobRunner

log = logging.getLogger(__name__)

JOB_TITLES = {
    "import": "Import dataset",
    "biased_train": "Train biased model and score samples",
    "caption": "Caption candidates",
    "filter": "Filter captions",
    "generate": "Generate images",
    "debias": "Train debiased model",
    "rescore": "Re-score with the debiased model",
    "round": "Start the next round",
    "gradcam": "Grad-CAM comparison",
    "export": "Export report",
}


def redone_since(session, job, kinds) -> str:
    """The titles of the jobs of `kinds` that finished after `job` was created (“Title” and
    “Title”), "" when none did: what a result of `job` does not reflect yet."""
    done = repo.kinds_done_since(session, job, list(kinds)) if job is not None else []
    return " and ".join(f"“{JOB_TITLES.get(kind, kind)}”" for kind in done)


@dataclass
class Studio:
    """What handlers share within one process."""

    store: Store
    datasets: DatasetCache
    jobs: JobRunner
    data_root: Path | None = None
    demo_error: str | None = None
    _demo_thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def open(cls, workspace_root: Path, *, data_root: Path | None = None) -> Studio:
        """Open the workspace, mark the jobs a previous process left running as interrupted
        and remove the files they left half written (see storage.recovery)."""
        serialise_imports()  # before any thread of the app imports the library
        store = open_store(Path(workspace_root))
        recovery = recover(store)
        if recovery.interrupted:
            log.warning("marked job(s) %s of the previous run as interrupted; run them again",
                        recovery.interrupted)
        if recovery.removed:
            log.warning("removed %d partial file(s) of unfinished jobs", len(recovery.removed))
        return cls(store, DatasetCache(store), JobRunner(store),
                   Path(data_root).resolve() if data_root else None)

    def start_background_work(self, *, demo: bool = True) -> None:
        """After the page is up: the demo project (on an empty workspace) and the library
        imports, each in a thread, so neither slows the first page load."""
        if demo:
            self.start_demo()
        start_warm_up()

    def start_demo(self) -> None:
        with self.store.sessions() as session:
            if repo.list_projects(session):
                return
        self._demo_thread = threading.Thread(target=self._prepare_demo, name="demo-project",
                                             daemon=True)
        self._demo_thread.start()

    def _prepare_demo(self) -> None:
        try:
            import_builtin(self.store, self.datasets, DEMO_SOURCE, name=DEMO_NAME,
                           conflict_ratio=DEMO_CONFLICT_RATIO, seed=0)
        except Exception as error:  # reported on the page; the app stays usable for uploads
            log.exception("could not prepare the demo project")
            self.demo_error = str(error)

    @property
    def demo_preparing(self) -> bool:
        return self._demo_thread is not None and self._demo_thread.is_alive()

    def wait_for_demo(self, timeout: float | None = None) -> None:
        if self._demo_thread is not None:
            self._demo_thread.join(timeout)

    def close(self, *, job_wait_s: float = 20.0) -> None:
        """Stop every queued or running job and wait up to `job_wait_s` for the running one's
        worker to stop (at its next progress update; an interpreter that exits while a worker
        is inside torch aborts), then close the store. A job still running after that is
        marked interrupted at the next start, as after a crash."""
        self.wait_for_demo(timeout=60)
        stopped = []
        with self.store.sessions.begin() as session:
            while (job := repo.active_job(session)) is not None and repo.cancel_job(session,
                                                                                   job.id):
                stopped.append(job.id)
        if stopped:
            log.warning("the app is closing: stopped job(s) %s", stopped)
            if not self.jobs.wait_until_idle(job_wait_s):
                log.warning("a job did not stop within %.0f s", job_wait_s)
        self.store.close()


# -- projects ----------------------------------------------------------------------------------


def project_choices(studio: Studio) -> list[tuple[str, int]]:
    """(name, id) of every project, newest first."""
    with studio.store.sessions() as session:
        return [(p.name, p.id) for p in repo.list_projects(session)]


def default_project(studio: Studio) -> int | None:
    """The project last worked on: a refreshed page or a second tab opens it."""
    with studio.store.sessions() as session:
        return repo.most_recent_project_id(session)


def require_project(studio: Studio, project_id: int | None) -> int:
    if project_id is None:
        if studio.demo_preparing:
            studio.wait_for_demo(timeout=120)
            found = default_project(studio)
            if found is not None:
                return found
        raise ValueError("No project is open: pick the demo or upload a dataset in tab 1")
    return int(project_id)


# -- jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatusView:
    """The job banner: the running job, else the last one that ended."""

    job_id: int | None
    title: str
    status: str  # queued, running, done, failed, interrupted, cancelled; "" when no job
    progress: float
    message: str
    error: str | None
    finished_at: datetime | None
    seconds: float | None
    kind: str = ""  # the job's JobKind

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def job_status(studio: Studio, project_id: int | None) -> JobStatusView:
    if project_id is None:
        message = ("Preparing the demo dataset (first start only)…" if studio.demo_preparing
                   else studio.demo_error or "")
        return JobStatusView(None, "", "", 0.0, message, studio.demo_error, None, None)
    with studio.store.sessions() as session:
        job = (repo.active_job(session, project_id)
               or repo.latest_finished_job(session, project_id))
        return _status_view(job)


def demo_status(studio: Studio) -> str:
    """What the page says while no project exists: the demo is being prepared, or why it
    failed; "" once it is ready."""
    return job_status(studio, None).message


def _status_view(job: Job | None) -> JobStatusView:
    if job is None:
        return JobStatusView(None, "", "", 0.0, "", None, None, None)
    seconds = job.timings.get("total")
    if seconds is None and job.started_at and job.finished_at:
        seconds = (job.finished_at - job.started_at).total_seconds()
    return JobStatusView(job.id, JOB_TITLES.get(job.kind, job.kind), job.status, job.progress,
                         job.message, job.error, job.finished_at, seconds, job.kind)


def stop_job(studio: Studio, project_id: int | None, *, wait_s: float = 10.0) -> str:
    """Cancel the project's running job, and say once it has stopped: its worker stops at its
    next progress update, waited for up to `wait_s`."""
    if project_id is None:
        return "No job is running."
    with studio.store.sessions.begin() as session:
        job = repo.active_job(session, int(project_id))
        if job is None or not repo.cancel_job(session, job.id):
            return "No job is running."
        title = JOB_TITLES.get(job.kind, job.kind)
    if studio.jobs.wait_until_idle(wait_s):
        return f"■ Stopped “{title}”: nothing of that run was kept."
    return f"Stopping “{title}”… it stops at its next progress update."


def revision(studio: Studio, project_id: int | None) -> str:
    """Changes whenever a job of the project ends: other tabs then re-read their results."""
    if project_id is None:
        return "none"
    with studio.store.sessions() as session:
        job = repo.latest_finished_job(session, int(project_id))
        return f"{project_id}:{job.id if job else 0}:{job.status if job else ''}"


def project_settings(studio: Studio, project_id: int | None) -> dict:
    """The settings the project last ran with (its RunConfig as a dict); {} without a project."""
    if project_id is None:
        return {}
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        return dict(project.settings.get("config", {})) if project else {}


def class_names(studio: Studio, project_id: int | None) -> list[str]:
    if project_id is None:
        return []
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        return list(project.class_names) if project else []
