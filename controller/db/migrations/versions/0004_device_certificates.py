"""device certificate history (enrollment and renewals)

Revision ID: 0004_device_certificates
Revises: 0003_rollouts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_device_certificates"
down_revision = "0003_rollouts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_certificates",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_certificates_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_device_certificates")),
    )
    op.create_index(op.f("ix_device_certificates_device_id"), "device_certificates", ["device_id"])
    op.create_index(op.f("ix_device_certificates_public_key_sha256"), "device_certificates", ["public_key_sha256"])
    # Devices enrolled before this table existed: their one certificate becomes the first row.
    op.execute(
        "INSERT INTO device_certificates (serial, device_id, public_key_sha256, issued_at, not_after)"
        " SELECT cert_serial, id, public_key_sha256, enrolled_at, cert_not_after FROM devices"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_device_certificates_public_key_sha256"), table_name="device_certificates")
    op.drop_index(op.f("ix_device_certificates_device_id"), table_name="device_certificates")
    op.drop_table("device_certificates")
