"""Initial schema: jobs, results, audit events, API tokens, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("view", sa.Text),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("external_ref", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("body_sha256", sa.Text),
        sa.Column("body_size", sa.BigInteger),
        sa.Column("object_key", sa.Text),
        sa.Column("sealed_size", sa.BigInteger),
        sa.Column("sealed_sha256", sa.Text),
        sa.Column("nonce", sa.Text),
        sa.Column("submitted_by", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("sealed_at", _TS),
        sa.Column("queued_at", _TS),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("failure_reason", sa.Text),
        sa.Column("failure_message", sa.Text),
        sa.UniqueConstraint(
            "tenant", "idempotency_key", name="uq_jobs_tenant_idempotency"
        ),
        sa.CheckConstraint(
            "status IN ('received', 'queued', 'running', 'succeeded', 'failed')",
            name="ck_jobs_status",
        ),
    )
    op.create_index(
        "ix_jobs_tenant_created",
        "jobs",
        ["tenant", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "results",
        sa.Column(
            "job_id",
            pg.UUID(as_uuid=False),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sealed_result", pg.BYTEA, nullable=False),
        sa.Column("sealed_result_sha256", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("wrapped_key", pg.BYTEA, nullable=False),
        sa.Column("encryption_context", pg.JSONB, nullable=False),
        sa.Column("receipt", pg.JSONB, nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("model_sha256", sa.Text, nullable=False),
        sa.Column("stored_at", _TS, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("job_id", pg.UUID(as_uuid=False)),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index(
        "ix_audit_tenant_at",
        "audit_events",
        ["tenant", sa.text("at DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column(
            "job_id",
            pg.UUID(as_uuid=False),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", _TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("idempotency_keys", "api_tokens", "audit_events", "results"):
        op.drop_table(table)
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.drop_table("jobs")
