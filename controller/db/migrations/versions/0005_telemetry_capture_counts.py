"""sample-capture counters on telemetry batches (nullable: agents that count none send none)

Revision ID: 0005_telemetry_capture
Revises: 0004_device_certificates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_telemetry_capture"
down_revision = "0004_device_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_batches") as batch:
        batch.add_column(sa.Column("capture", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_batches") as batch:
        batch.drop_column("capture")
