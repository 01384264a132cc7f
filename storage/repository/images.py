"""Generated images: one row per (prompt, seed) a diffusion model rendered, and a person's review.

Recording is idempotent on (prompt, seed): the first row stands. Rows hold workspace-relative
paths; deleting a row leaves its file on disk. This module knows nothing of diffusion models
or image files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storage.models import GeneratedImage, Prompt
from storage.repository._rows import require_row


def add_generated_image(
    session: Session,
    *,
    job_id: int,
    prompt_id: int,
    path: str,
    seed: int,
    model: str,
    params: Mapping[str, Any] | None = None,
) -> GeneratedImage:
    """Record an image; if (prompt_id, seed) is already stored, return that row unchanged."""
    values = {"job_id": job_id, "path": path, "model": model, "params": dict(params or {})}
    statement = sqlite_insert(GeneratedImage).values(prompt_id=prompt_id, seed=seed, **values)
    session.execute(statement.on_conflict_do_nothing(index_elements=["prompt_id", "seed"]))
    query = select(GeneratedImage).where(
        GeneratedImage.prompt_id == prompt_id, GeneratedImage.seed == seed
    )
    return session.scalars(query).one()


def set_image_accepted(session: Session, image_id: int, accepted: bool | None) -> None:
    """Record a person's review (None: not reviewed)."""
    require_row(session, GeneratedImage, image_id).accepted = accepted


def set_images_accepted(session: Session, image_ids: Iterable[int], accepted: bool | None) -> int:
    """Record one review for several images; returns how many rows changed."""
    ids = list(image_ids)
    if not ids:
        return 0
    statement = update(GeneratedImage).where(GeneratedImage.id.in_(ids)).values(accepted=accepted)
    return session.execute(statement, execution_options={"synchronize_session": "fetch"}).rowcount


def set_image_checks(session: Session, checks: Mapping[int, Mapping[str, Any]]) -> None:
    """Store the automatic checks of images ({image id: checks}) in their params."""
    for image_id, found in checks.items():
        image = require_row(session, GeneratedImage, image_id)
        image.params = {**image.params, "checks": dict(found)}  # a new dict: JSON is tracked


def list_generated_images(
    session: Session,
    *,
    job_id: int | None = None,
    project_id: int | None = None,
    prompt_ids: Iterable[int] | None = None,
    accepted_only: bool = False,
    exclude_rejected: bool = False,
) -> Sequence[GeneratedImage]:
    """Images of one generate job, of every job of a project, or of some prompts; in insertion
    order. `exclude_rejected` keeps accepted and not yet reviewed images."""
    if job_id is None and project_id is None and prompt_ids is None:
        raise ValueError("expected job_id, project_id or prompt_ids; got none of them")
    query = select(GeneratedImage)
    if job_id is not None:
        query = query.where(GeneratedImage.job_id == job_id)
    if project_id is not None:
        query = query.join(Prompt, Prompt.id == GeneratedImage.prompt_id).where(
            Prompt.project_id == project_id
        )
    if prompt_ids is not None:
        query = query.where(GeneratedImage.prompt_id.in_(list(prompt_ids)))
    if accepted_only:
        query = query.where(GeneratedImage.accepted == True)
    if exclude_rejected:
        query = query.where(GeneratedImage.accepted.is_not(False))
    return session.scalars(query.order_by(GeneratedImage.id)).all()


def get_generated_image(session: Session, image_id: int) -> GeneratedImage | None:
    return session.get(GeneratedImage, image_id)


def delete_generated_images(session: Session, image_ids: Iterable[int]) -> int:
    """Delete image rows (their files stay on disk); returns how many were deleted."""
    ids = list(image_ids)
    if not ids:
        return 0
    statement = delete(GeneratedImage).where(GeneratedImage.id.in_(ids))
    return session.execute(statement, execution_options={"synchronize_session": "fetch"}).rowcount
