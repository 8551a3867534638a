"""telemetry points, batches and captured samples

Revision ID: 0002_telemetry
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_telemetry"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "telemetry_batches",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("dropped_points", sa.BigInteger(), nullable=False),
        sa.Column("rolled_up_points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_batches")),
        sa.UniqueConstraint("device_id", "stream", "seq", name="uq_telemetry_batches_key"),
    )
    op.create_index(op.f("ix_telemetry_batches_device_id"), "telemetry_batches", ["device_id"])
    op.create_index(op.f("ix_telemetry_batches_received_at"), "telemetry_batches", ["received_at"])
    op.create_table(
        "telemetry_model_points",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("hardware_class", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("variant", sa.String(length=128), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_s", sa.Float(), nullable=False),
        sa.Column("latency_max_s", sa.Float(), nullable=False),
        sa.Column("buckets", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_model_points")),
        sa.UniqueConstraint("device_id", "model", "version", "variant", "resolution_s", "start_at",
                            name="uq_telemetry_model_points_key"),
    )
    for column in ("device_id", "hardware_class", "model", "start_at"):
        op.create_index(op.f(f"ix_telemetry_model_points_{column}"), "telemetry_model_points", [column])
    op.create_table(
        "telemetry_system_points",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_pct", sa.Float(), nullable=True),
        sa.Column("mem_used_mb", sa.Float(), nullable=True),
        sa.Column("disk_used_pct", sa.Float(), nullable=True),
        sa.Column("temp_max_c", sa.Float(), nullable=True),
        sa.Column("temps_c", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_system_points")),
        sa.UniqueConstraint("device_id", "resolution_s", "start_at", name="uq_telemetry_system_points_key"),
    )
    for column in ("device_id", "start_at"):
        op.create_index(op.f(f"ix_telemetry_system_points_{column}"), "telemetry_system_points", [column])
    op.create_table(
        "samples",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("sample_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("variant", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("object_key", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint("device_id", "sample_id", name="uq_samples_device_sample"),
    )
    for column in ("device_id", "model", "captured_at", "status"):
        op.create_index(op.f(f"ix_samples_{column}"), "samples", [column])


def downgrade() -> None:
    for table in ("samples", "telemetry_system_points", "telemetry_model_points", "telemetry_batches"):
        op.drop_table(table)
