"""Samples: a project's images in dataset order, their splits, labels and bias attributes.

Bulk insert, lookups by id or position, columnar reads for arrays, and counts per class, split
and bias. This module knows nothing of scores, jobs or the image files themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from storage.models import Sample
from storage.repository._rows import RowValues


@dataclass(frozen=True)
class SampleColumns:
    """A project's samples as parallel lists in dataset order, ready for `numpy.asarray`."""

    ids: list[int]
    positions: list[int]
    paths: list[str]
    splits: list[str]
    labels: list[int]
    biases: list[int | None]
    mask_paths: list[str | None]


def add_samples(session: Session, project_id: int, rows: Iterable[RowValues]) -> int:
    """Insert samples; each row has position, path, split, label and optionally bias, mask_path."""
    values = [{"bias": None, "mask_path": None, **row, "project_id": project_id} for row in rows]
    if values:
        session.execute(insert(Sample), values)
    return len(values)


def list_samples(session: Session, project_id: int, split: str | None = None) -> Sequence[Sample]:
    """In dataset order (by position)."""
    query = select(Sample).where(Sample.project_id == project_id)
    if split is not None:
        query = query.where(Sample.split == split)
    return session.scalars(query.order_by(Sample.position)).all()


def sample_columns(session: Session, project_id: int, split: str | None = None) -> SampleColumns:
    """Like `list_samples` but columnar and without ORM objects: ~5x faster at 100k+ rows."""
    columns = (Sample.id, Sample.position, Sample.path, Sample.split, Sample.label, Sample.bias)
    query = select(*columns, Sample.mask_path).where(Sample.project_id == project_id)
    if split is not None:
        query = query.where(Sample.split == split)
    rows = session.execute(query.order_by(Sample.position)).all()
    return SampleColumns(*([row[i] for row in rows] for i in range(len(fields(SampleColumns)))))


def count_samples(session: Session, project_id: int, split: str | None = None) -> int:
    query = select(func.count()).select_from(Sample).where(Sample.project_id == project_id)
    if split is not None:
        query = query.where(Sample.split == split)
    return session.scalar(query) or 0


def get_sample(session: Session, sample_id: int) -> Sample | None:
    return session.get(Sample, sample_id)


def samples_by_ids(session: Session, sample_ids: Iterable[int]) -> dict[int, Sample]:
    """id -> sample, for the ids that exist."""
    ids = list(sample_ids)
    found: dict[int, Sample] = {}
    for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
        query = select(Sample).where(Sample.id.in_(ids[start : start + 500]))
        found.update((sample.id, sample) for sample in session.scalars(query))
    return found


def class_split_counts(session: Session, project_id: int) -> dict[tuple[str, int], int]:
    """(split, label) -> number of samples, for every pair that has samples."""
    query = (
        select(Sample.split, Sample.label, func.count())
        .where(Sample.project_id == project_id)
        .group_by(Sample.split, Sample.label)
    )
    return {(split, label): count for split, label, count in session.execute(query)}


def label_bias_counts(
    session: Session, project_id: int, split: str = "train"
) -> dict[tuple[int, int], int]:
    """(label, bias) -> number of samples of `split` whose bias is known."""
    query = (
        select(Sample.label, Sample.bias, func.count())
        .where(Sample.project_id == project_id, Sample.split == split, Sample.bias.is_not(None))
        .group_by(Sample.label, Sample.bias)
    )
    return {(label, bias): count for label, bias, count in session.execute(query)}


def samples_per_class(
    session: Session, project_id: int, *, split: str, per_class: int
) -> list[Sample]:
    """The first `per_class` samples (by position) of each label in `split`, label by label."""
    labels = session.scalars(
        select(Sample.label)
        .where(Sample.project_id == project_id, Sample.split == split)
        .distinct()
        .order_by(Sample.label)
    ).all()
    out: list[Sample] = []
    for label in labels:
        query = (
            select(Sample)
            .where(Sample.project_id == project_id, Sample.split == split, Sample.label == label)
            .order_by(Sample.position)
            .limit(per_class)
        )
        out.extend(session.scalars(query))
    return out


def sample_ids_by_position(session: Session, project_id: int) -> dict[int, int]:
    """position -> sample id, to turn a library's per-position arrays into score rows."""
    query = select(Sample.position, Sample.id).where(Sample.project_id == project_id)
    return {position: sample_id for position, sample_id in session.execute(query)}
