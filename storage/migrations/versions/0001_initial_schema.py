"""Initial schema: projects, samples, jobs, scores, captions, prompts, generated images, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written out in full (not `Base.metadata.create_all`) so this revision stays what it was when the
models change; `tests/test_storage.py` checks that the migrated schema matches `storage.models`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _fk(column: str, table: str, referred: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{referred}.id"], name=f"fk_{table}_{column}_{referred}", ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "projects",
        _id(),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("bias_names", sa.JSON(), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.UniqueConstraint("name", name="uq_projects_name"),
    )
    op.create_table(
        "samples",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("bias", sa.Integer(), nullable=True),
        sa.Column("mask_path", sa.String(), nullable=True),
        _fk("project_id", "samples", "projects", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_samples"),
        sa.UniqueConstraint("project_id", "position", name="uq_samples_project_id_position"),
    )
    op.create_index("ix_samples_project_id_split", "samples", ["project_id", "split"])
    op.create_table(
        "jobs",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'cancelled')",
            name="ck_jobs_status",
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="ck_jobs_progress"),
        _fk("project_id", "jobs", "projects", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_project_id_kind_status", "jobs", ["project_id", "kind", "status"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "scores",
        _id(),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Double(), nullable=False),
        sa.Column("is_candidate", sa.Boolean(), nullable=False),
        sa.Column("rank_in_class", sa.Integer(), nullable=True),
        sa.Column("excluded", sa.Boolean(), nullable=False),
        _fk("job_id", "scores", "jobs", "CASCADE"),
        _fk("sample_id", "scores", "samples", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
        sa.UniqueConstraint("job_id", "sample_id", name="uq_scores_job_id_sample_id"),
    )
    op.create_index("ix_scores_job_id_loss", "scores", ["job_id", "loss"])
    op.create_index("ix_scores_job_id_label_loss", "scores", ["job_id", "label", "loss"])
    op.create_index(
        "ix_scores_job_id_is_candidate_loss", "scores", ["job_id", "is_candidate", "loss"]
    )
    op.create_index("ix_scores_sample_id", "scores", ["sample_id"])
    op.create_table(
        "captions",
        _id(),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        _fk("job_id", "captions", "jobs", "CASCADE"),
        _fk("sample_id", "captions", "samples", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_captions"),
    )
    op.create_index("ix_captions_job_id_sample_id", "captions", ["job_id", "sample_id"])
    op.create_index("ix_captions_sample_id", "captions", ["sample_id"])
    op.create_table(
        "prompts",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("sample_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("text_original", sa.String(), nullable=False),
        sa.Column("text_edited", sa.String(), nullable=True),
        sa.Column("keep", sa.Boolean(), nullable=False),
        sa.Column("matched_words", sa.JSON(), nullable=False),
        _fk("project_id", "prompts", "projects", "CASCADE"),
        _fk("job_id", "prompts", "jobs", "CASCADE"),
        _fk("sample_id", "prompts", "samples", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_prompts"),
    )
    op.create_index("ix_prompts_project_id_label", "prompts", ["project_id", "label"])
    op.create_index("ix_prompts_job_id", "prompts", ["job_id"])
    op.create_index("ix_prompts_sample_id", "prompts", ["sample_id"])
    op.create_table(
        "generated_images",
        _id(),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=True),
        _fk("job_id", "generated_images", "jobs", "CASCADE"),
        _fk("prompt_id", "generated_images", "prompts", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_generated_images"),
        sa.UniqueConstraint("prompt_id", "seed", name="uq_generated_images_prompt_id_seed"),
    )
    op.create_index("ix_generated_images_job_id", "generated_images", ["job_id"])
    op.create_table(
        "models",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("weights_path", sa.String(), nullable=False),
        sa.Column("arch", sa.String(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        _fk("project_id", "models", "projects", "CASCADE"),
        _fk("job_id", "models", "jobs", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
    )
    op.create_index("ix_models_project_id_role", "models", ["project_id", "role"])
    op.create_index("ix_models_job_id", "models", ["job_id"])


def downgrade() -> None:
    for table in (
        "models",
        "generated_images",
        "prompts",
        "captions",
        "scores",
        "jobs",
        "samples",
        "projects",
    ):
        op.drop_table(table)
