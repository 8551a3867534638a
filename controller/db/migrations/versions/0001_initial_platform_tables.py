"""initial platform tables

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 21:10:10.740224
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_token_hash"), ["token_hash"], unique=True)

    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hardware_class", sa.String(length=64), nullable=False),
        sa.Column("hardware_profile", sa.JSON(), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(length=256), nullable=True),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("cert_not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("mqtt_username", sa.String(length=64), nullable=False),
        sa.Column("mqtt_password_hash", sa.String(length=256), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_model", sa.String(length=128), nullable=True),
        sa.Column("current_version", sa.String(length=64), nullable=True),
        sa.Column("current_variant", sa.String(length=128), nullable=True),
        sa.Column("update_state", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("cert_serial", name=op.f("uq_devices_cert_serial")),
        sa.UniqueConstraint("mqtt_username", name=op.f("uq_devices_mqtt_username")),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_current_model"), ["current_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_current_version"), ["current_version"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_hardware_class"), ["hardware_class"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_public_key_sha256"), ["public_key_sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_status"), ["status"], unique=False)

    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("hardware_class", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_device", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
    )
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_enrollment_tokens_token_hash"), ["token_hash"], unique=True)

    op.create_table(
        "model_releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("preprocessing", sa.Text(), nullable=False),
        sa.Column("release_counter", sa.Integer(), nullable=False),
        sa.Column("min_accuracy", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("progress_message", sa.String(length=256), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("model_key", sa.String(length=512), nullable=False),
        sa.Column("golden_key", sa.String(length=512), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_releases")),
        sa.UniqueConstraint("name", "version", name="uq_model_releases_name_version"),
    )
    with op.batch_alter_table("model_releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_releases_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_releases_status"), ["status"], unique=False)

    op.create_table(
        "device_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_events_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_events")),
    )
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_events_device_id"), ["device_id"], unique=False)

    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_tags_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", "tag", name=op.f("pk_device_tags")),
    )
    with op.batch_alter_table("device_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_tags_tag"), ["tag"], unique=False)

    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.String(length=128), nullable=False),
        sa.Column("runtime", sa.String(length=32), nullable=False),
        sa.Column("precision", sa.String(length=16), nullable=False),
        sa.Column("target_path", sa.String(length=512), nullable=False),
        sa.Column("artifact_key", sa.String(length=512), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("offered", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("custom", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["model_releases.id"],
            name=op.f("fk_variants_release_id_model_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_variants")),
        sa.UniqueConstraint("release_id", "variant_id", name="uq_variants_release_variant"),
    )
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_variants_release_id"), ["release_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_variants_release_id"))

    op.drop_table("variants")
    with op.batch_alter_table("device_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_tags_tag"))

    op.drop_table("device_tags")
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_events_device_id"))
        batch_op.drop_index(batch_op.f("ix_device_events_at"))

    op.drop_table("device_events")
    with op.batch_alter_table("model_releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_releases_status"))
        batch_op.drop_index(batch_op.f("ix_model_releases_name"))

    op.drop_table("model_releases")
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_tokens_token_hash"))

    op.drop_table("enrollment_tokens")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_status"))
        batch_op.drop_index(batch_op.f("ix_devices_public_key_sha256"))
        batch_op.drop_index(batch_op.f("ix_devices_hardware_class"))
        batch_op.drop_index(batch_op.f("ix_devices_current_version"))
        batch_op.drop_index(batch_op.f("ix_devices_current_model"))

    op.drop_table("devices")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_token_hash"))

    op.drop_table("api_tokens")
