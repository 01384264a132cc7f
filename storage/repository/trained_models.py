"""Trained models: a project's classifiers by role (biased, vanilla, debiased, each baseline),
with their weights' workspace path and metrics.

A role is any short lower-case slug (`storage.models.MODEL_ROLE_PATTERN`), so a new baseline
method needs no edit here. Reads skip models of jobs that did not end done. This module knows
nothing of the weights' format or of how a model was trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import MODEL_ROLE_PATTERN, Job, JobStatus, TrainedModel


def add_model(
    session: Session,
    project_id: int,
    *,
    role: str,
    weights_path: str,
    arch: str,
    job_id: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Record a classifier whose weights are at `weights_path` (relative to the workspace).

    `role` is a `ModelRole` or a baseline's name: any short lower-case slug.
    """
    if not isinstance(role, str) or MODEL_ROLE_PATTERN.fullmatch(role) is None:
        raise ValueError(
            f"model role {role!r} is not a short lower-case slug; expected a lower-case letter "
            "then up to 31 lower-case letters, digits or hyphens, like 'debiased' or "
            f"'oversample-topk' (pattern {MODEL_ROLE_PATTERN.pattern})")
    model = TrainedModel(
        project_id=project_id,
        job_id=job_id,
        role=str(role),
        weights_path=weights_path,
        arch=arch,
        metrics=dict(metrics or {}),
    )
    session.add(model)
    session.flush()
    return model


def latest_model(session: Session, project_id: int, role: str) -> TrainedModel | None:
    """The newest model of `role` whose job finished (see `list_models`)."""
    query = select(TrainedModel).where(
        TrainedModel.project_id == project_id, TrainedModel.role == role, _of_finished_job()
    )
    return session.scalars(query.order_by(*_NEWEST_MODEL_FIRST).limit(1)).first()


def list_models(
    session: Session, project_id: int, role: str | None = None
) -> Sequence[TrainedModel]:
    """Newest first; only models recorded outside a job or by a job that ended done (a job
    killed between storing its model and finishing left a model nothing else agrees with)."""
    query = select(TrainedModel).where(TrainedModel.project_id == project_id, _of_finished_job())
    if role is not None:
        query = query.where(TrainedModel.role == role)
    return session.scalars(query.order_by(*_NEWEST_MODEL_FIRST)).all()


_NEWEST_MODEL_FIRST = (TrainedModel.created_at.desc(), TrainedModel.id.desc())


def _of_finished_job() -> Any:
    done = select(Job.id).where(Job.status == JobStatus.DONE.value)
    return TrainedModel.job_id.is_(None) | TrainedModel.job_id.in_(done)
