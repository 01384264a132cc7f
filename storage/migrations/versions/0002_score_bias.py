"""Scores carry their sample's bias attribute, like its label, and the per-class score index
covers every column a histogram reads: a histogram of 200k scores comes from one index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Existing scores get the bias of their sample, so an upgraded workspace shows the same charts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COVERED = ["job_id", "label", "loss", "bias", "is_candidate", "excluded", "sample_id"]
COVERING = "ix_scores_" + "_".join(COVERED)


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("bias", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE scores SET bias = (SELECT samples.bias FROM samples "
        "WHERE samples.id = scores.sample_id)"
    )
    op.drop_index("ix_scores_job_id_label_loss", table_name="scores")
    op.create_index(COVERING, "scores", COVERED)


def downgrade() -> None:
    op.drop_index(COVERING, table_name="scores")
    op.create_index("ix_scores_job_id_label_loss", "scores", ["job_id", "label", "loss"])
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("bias")
