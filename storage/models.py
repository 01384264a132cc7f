"""The tables of the DiffuBias Studio store, as typed SQLAlchemy 2 models.

One row per durable thing: a project (a dataset), its samples, the jobs run on it and what each
job produced (scores, captions, prompts, generated images, trained models). Files live in the
workspace; rows hold their paths relative to the workspace root plus the provenance (which job,
model, seed and parameters produced them). Rows carry no ORM relationships on purpose: sessions are
short and objects outlive them, so every read is an explicit repository query.

This module knows nothing of torch, Gradio or where the database file lives. The schema is created
by the migrations in `storage/migrations`; a change here needs a new revision there.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.DONE, JobStatus.FAILED, JobStatus.INTERRUPTED, JobStatus.CANCELLED)


class JobKind(enum.StrEnum):
    """What a job does. Stored as plain text: adding a kind needs no migration."""

    IMPORT = "import"
    BIASED_TRAIN = "biased_train"
    VANILLA_TRAIN = "vanilla_train"
    SCORE = "score"
    CAPTION = "caption"
    FILTER = "filter"
    GENERATE = "generate"
    DEBIAS = "debias"
    RESCORE = "rescore"  # the debiased model's losses: what remains after a round
    ROUND = "round"  # another round started from a rescore job's candidates
    GRADCAM = "gradcam"
    EVALUATE = "evaluate"
    EXPORT = "export"


class ModelRole(enum.StrEnum):
    """Why a classifier was trained: the roles the app itself asks for by name.

    Stored as plain text, and the store takes any role that matches `MODEL_ROLE_PATTERN`, so a
    baseline method is stored under its own name with no member here and no migration.
    """

    BIASED = "biased"
    VANILLA = "vanilla"
    DEBIASED = "debiased"


# A model role is a short lower-case slug (a ModelRole or a baseline's name), matched whole; at
# most 32 characters because models.role is a String(32).
MODEL_ROLE_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")


def utc_now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no time zones) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# Named constraints keep future Alembic batch migrations (table rebuilds on SQLite) predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        list[int]: JSON(),
    }


class Project(Base):
    """A dataset under audit: its classes, its bias attribute names and the settings used."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str]  # where the data came from: a folder, an archive, a dataset id
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    class_names: Mapped[list[str]]
    bias_names: Mapped[list[str]] = mapped_column(default=list)
    image_size: Mapped[int]
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Sample(Base):
    """One image of a project; `position` is its index in the dataset's stable order."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("project_id", "position"),
        Index(None, "project_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    position: Mapped[int]
    path: Mapped[str]  # relative to the workspace root
    split: Mapped[str] = mapped_column(String(16))
    label: Mapped[int]
    bias: Mapped[int | None]  # the bias attribute when the dataset knows it (evaluation only)
    mask_path: Mapped[str | None]


class Job(Base):
    """One run of a stage: its parameters, where it is, and what it returned."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'cancelled')",
            name="status",
        ),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index(None, "project_id", "kind", "status"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(default="")
    error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # stage name -> seconds
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Score(Base):
    """The biased classifier's loss on one sample; high loss marks a bias-conflicting candidate."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("job_id", "sample_id"),
        # Pages read in loss order from an index: all scores, one class's, the candidates.
        # The per-class one also covers every column `score_columns` reads, so a histogram of
        # 200k scores comes from the index alone (twice as fast as with row lookups).
        Index(None, "job_id", "loss"),
        Index(None, "job_id", "label", "loss", "bias", "is_candidate", "excluded", "sample_id"),
        Index(None, "job_id", "is_candidate", "loss"),
        Index(None, "sample_id"),  # sample deletes cascade here
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    label: Mapped[int]  # the sample's label, copied so per-class queries need no join
    bias: Mapped[int | None]  # the sample's bias attribute, copied too (histograms by group)
    loss: Mapped[float]
    is_candidate: Mapped[bool] = mapped_column(default=False)
    rank_in_class: Mapped[int | None]  # 0 = highest loss in its class, among candidates
    excluded: Mapped[bool] = mapped_column(default=False)  # a person took it out of the set


class Caption(Base):
    """A caption of one candidate sample, from a captioning model or from dataset metadata."""

    __tablename__ = "captions"
    __table_args__ = (Index(None, "job_id", "sample_id"), Index(None, "sample_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    text: Mapped[str]
    source: Mapped[str]  # the captioning model id, or "metadata"
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Prompt(Base):
    """A generation prompt: a filtered caption, possibly edited by a person."""

    __tablename__ = "prompts"
    __table_args__ = (
        Index(None, "project_id", "label"),
        Index(None, "job_id"),
        Index(None, "sample_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="SET NULL"))
    label: Mapped[int]
    text_original: Mapped[str]
    text_edited: Mapped[str | None]
    keep: Mapped[bool] = mapped_column(default=True)
    matched_words: Mapped[list[str]] = mapped_column(default=list)

    @property
    def text(self) -> str:
        """The text to generate from: the edit when there is one."""
        return self.text_edited if self.text_edited is not None else self.text_original


class GeneratedImage(Base):
    """One image a diffusion model made from a prompt and a seed."""

    __tablename__ = "generated_images"
    __table_args__ = (UniqueConstraint("prompt_id", "seed"), Index(None, "job_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    path: Mapped[str]  # relative to the workspace root
    seed: Mapped[int]
    model: Mapped[str]  # the diffusion model id
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    accepted: Mapped[bool | None]  # None until a person reviews it


class TrainedModel(Base):
    """A classifier's weights (a safetensors file in the workspace) and how good it is."""

    __tablename__ = "models"
    __table_args__ = (Index(None, "project_id", "role"), Index(None, "job_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    role: Mapped[str] = mapped_column(String(32))  # matches MODEL_ROLE_PATTERN
    weights_path: Mapped[str]  # relative to the workspace root
    arch: Mapped[str]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
