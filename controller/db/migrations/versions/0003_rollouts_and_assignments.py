"""rollouts and the director assignment ledger

Revision ID: 0003_rollouts
Revises: 0002_telemetry
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_rollouts"
down_revision = "0002_telemetry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("release_model", sa.String(length=128), nullable=False),
        sa.Column("release_version", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_assignments")),
    )
    op.create_index(op.f("ix_assignments_rollout_id"), "assignments", ["rollout_id"], unique=False)
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("release_model", sa.String(length=128), nullable=False),
        sa.Column("release_version", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rollouts_state"), table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index(op.f("ix_assignments_rollout_id"), table_name="assignments")
    op.drop_table("assignments")
