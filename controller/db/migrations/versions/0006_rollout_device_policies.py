"""a rollout's device-policy overrides (nullable: rollouts without overrides sign the defaults)

Revision ID: 0006_rollout_device_policies
Revises: 0005_telemetry_capture
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_rollout_device_policies"
down_revision = "0005_telemetry_capture"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("device_policies", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("device_policies")
