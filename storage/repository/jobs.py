"""Jobs: the life of one run of a stage, from queued through running to how it ended.

Create, start, report progress, finish, cancel; find the latest, the active and the ended ones;
at start-up, mark what a crash left running as interrupted and name the files its rows still
point at. This module knows nothing of what a job computes: its results are opaque JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    GeneratedImage,
    Job,
    JobKind,
    JobStatus,
    TrainedModel,
    utc_now,
)
from storage.repository._rows import require_row

_JOB_KINDS = frozenset(kind.value for kind in JobKind)

INTERRUPTED_MESSAGE = ("the app stopped while this job ran (a crash, a kill or a restart); "
                       "run it again: finished work is kept")


def create_job(
    session: Session, project_id: int, kind: str, params: Mapping[str, Any] | None = None
) -> Job:
    """A queued job. `kind` is one of `JobKind`."""
    if kind not in _JOB_KINDS:
        expected = [known.value for known in JobKind]
        raise ValueError(f"unknown job kind {kind!r}; expected one of {expected}")
    job = Job(project_id=project_id, kind=str(kind), params=dict(params or {}))
    session.add(job)
    session.flush()
    return job


def start_job(session: Session, job_id: int) -> None:
    """Mark a job running from now."""
    _update_job(session, job_id, status=JobStatus.RUNNING.value, started_at=utc_now())


def update_job_progress(
    session: Session, job_id: int, progress: float, message: str | None = None
) -> str:
    """Record progress in [0, 1] and, when given, a one-line message for the UI.

    Returns the job's status, so a worker can stop when someone else set it to "cancelled".
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress {progress!r} is outside [0, 1]")
    values: dict[str, Any] = {"progress": float(progress)}
    if message is not None:
        values["message"] = message
    return _update_job(session, job_id, **values).status


def finish_job(
    session: Session,
    job_id: int,
    status: str,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
    timings: Mapping[str, float] | None = None,
) -> None:
    """End a job as done/failed/interrupted/cancelled; arguments left as None keep their value."""
    if status not in FINAL_STATUSES:
        expected = [final.value for final in FINAL_STATUSES]
        raise ValueError(f"status {status!r} does not end a job; expected one of {expected}")
    values: dict[str, Any] = {"status": str(status), "finished_at": utc_now()}
    if status == JobStatus.DONE:
        values["progress"] = 1.0
    for key, value in (("result", result), ("timings", timings)):
        if value is not None:
            values[key] = dict(value)
    if error is not None:
        values["error"] = error
    _update_job(session, job_id, **values)


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def latest_job(
    session: Session, project_id: int, kind: str, status: str | None = JobStatus.DONE
) -> Job | None:
    """The most recent job of `kind` for the project, with `status` (None: any status)."""
    query = select(Job).where(Job.project_id == project_id, Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    return session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(1)).first()


def kinds_done_since(session: Session, job: Job, kinds: Sequence[str]) -> list[str]:
    """Which of `kinds` have a job of `job`'s project that finished (done) after `job` was
    created, in the order given: the work a result of `job` no longer reflects."""
    newer = select(Job.kind).where(Job.project_id == job.project_id, Job.kind.in_(kinds),
                                   Job.status == JobStatus.DONE, Job.id > job.id).distinct()
    found = set(session.scalars(newer))
    return [kind for kind in kinds if kind in found]


def list_jobs(session: Session, project_id: int, kind: str | None = None) -> Sequence[Job]:
    """Newest first."""
    query = select(Job).where(Job.project_id == project_id)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())).all()


def active_job(session: Session, project_id: int | None = None) -> Job | None:
    """The newest queued or running job (of the project, when given)."""
    query = select(Job).where(Job.status.in_([status.value for status in ACTIVE_STATUSES]))
    if project_id is not None:
        query = query.where(Job.project_id == project_id)
    return session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(1)).first()


def latest_finished_job(session: Session, project_id: int) -> Job | None:
    """The newest job of the project that has ended, however it ended."""
    query = select(Job).where(
        Job.project_id == project_id,
        Job.status.in_([status.value for status in FINAL_STATUSES]),
    )
    return session.scalars(query.order_by(Job.finished_at.desc(), Job.id.desc()).limit(1)).first()


def cancel_job(session: Session, job_id: int) -> bool:
    """Mark a queued or running job cancelled (its worker stops at its next progress update).

    Returns False, changing nothing, when the job had already ended.
    """
    job = require_row(session, Job, job_id)
    if job.status not in ACTIVE_STATUSES:
        return False
    _update_job(session, job_id, status=JobStatus.CANCELLED.value, finished_at=utc_now())
    return True


def mark_interrupted_jobs(session: Session) -> int:
    """Mark every queued or running job interrupted; call once at start-up, before any worker runs.

    Returns how many jobs were marked.
    """
    return len(interrupt_active_jobs(session))


def interrupt_active_jobs(session: Session) -> list[int]:
    """`mark_interrupted_jobs`, returning the ids of the jobs it marked (oldest first)."""
    active = select(Job).where(Job.status.in_([status.value for status in ACTIVE_STATUSES]))
    jobs = session.scalars(active.order_by(Job.id)).all()
    for job in jobs:
        job.status, job.finished_at = JobStatus.INTERRUPTED.value, utc_now()
        job.error = job.error or INTERRUPTED_MESSAGE
    session.flush()
    return [job.id for job in jobs]


def unfinished_job_ids(session: Session) -> list[int]:
    """Jobs that ended without finishing (failed, interrupted, cancelled): their partial
    files may be cleaned up."""
    ended = [JobStatus.FAILED.value, JobStatus.INTERRUPTED.value, JobStatus.CANCELLED.value]
    return list(session.scalars(select(Job.id).where(Job.status.in_(ended)).order_by(Job.id)))


def referenced_paths(session: Session, job_ids: Iterable[int]) -> set[str]:
    """Workspace paths that rows of these jobs still point at (generated images, weights)."""
    ids = list(job_ids)
    images = select(GeneratedImage.path).where(GeneratedImage.job_id.in_(ids))
    weights = select(TrainedModel.weights_path).where(TrainedModel.job_id.in_(ids))
    return set(session.scalars(images)) | set(session.scalars(weights))


def _update_job(session: Session, job_id: int, **values: Any) -> Job:
    # Through the ORM object, not an UPDATE statement: a bulk UPDATE leaves never-loaded
    # attributes (started_at, finished_at) of an object already in the session reading None.
    job = require_row(session, Job, job_id)
    for name, value in values.items():
        setattr(job, name, value)
    session.flush()
    return job
