"""Projects: create, find, list, re-set and delete the datasets under audit.

A project's rows (samples, jobs and what they made) go with it by cascade; its files stay on
disk. This module knows nothing of the rows a project owns beyond which job is newest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Job, Project
from storage.repository._rows import require_row


def create_project(
    session: Session,
    *,
    name: str,
    source: str,
    class_names: Sequence[str],
    image_size: int,
    bias_names: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Project:
    if not name.strip():
        raise ValueError("project name is empty; expected a non-empty name")
    if not class_names:
        raise ValueError("class_names is empty; expected at least one class")
    project = Project(
        name=name.strip(),
        source=source,
        class_names=list(class_names),
        bias_names=list(bias_names),
        image_size=image_size,
        settings=dict(settings or {}),
    )
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, project_id: int) -> Project | None:
    return session.get(Project, project_id)


def get_project_by_name(session: Session, name: str) -> Project | None:
    return session.scalars(select(Project).where(Project.name == name)).one_or_none()


def list_projects(session: Session) -> Sequence[Project]:
    """Newest first."""
    query = select(Project).order_by(Project.created_at.desc(), Project.id.desc())
    return session.scalars(query).all()


def most_recent_project_id(session: Session) -> int | None:
    """The project of the newest job, else the newest project; None when there is none."""
    newest_job = select(Job.project_id).order_by(Job.created_at.desc(), Job.id.desc()).limit(1)
    project_id = session.scalar(newest_job)
    if project_id is not None:
        return project_id
    newest = select(Project.id).order_by(Project.created_at.desc(), Project.id.desc()).limit(1)
    return session.scalar(newest)


def update_project_settings(session: Session, project_id: int, settings: Mapping[str, Any]) -> None:
    """Replace the settings (JSON columns only save on reassignment, never on in-place edits)."""
    require_row(session, Project, project_id).settings = dict(settings)


def delete_project(session: Session, project_id: int) -> None:
    """Delete the project and, by cascade, every row it owns (its files stay on disk)."""
    session.delete(require_row(session, Project, project_id))
