"""The results database: jobs, results, audit events, API tokens, idempotency keys.

SQLAlchemy Core tables; the Alembic migrations in ``migrations/versions`` create
the same schema (a test compares their columns). No column holds a plaintext
image, prediction, key or patient field: the sealed result is ciphertext and the
receipt holds hashes and an attestation document.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, UUID

metadata = MetaData()

JOB_STATUSES = ("received", "queued", "running", "succeeded", "failed")
TERMINAL_STATUSES = frozenset({"succeeded", "failed"})


jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("view", Text),
    Column("model", Text, nullable=False),
    Column("priority", Text, nullable=False),
    Column("external_ref", Text),
    Column("idempotency_key", Text),
    Column("body_sha256", Text),
    Column("body_size", BigInteger),
    Column("object_key", Text),
    Column("sealed_size", BigInteger),
    Column("sealed_sha256", Text),
    Column("nonce", Text),
    Column("submitted_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sealed_at", DateTime(timezone=True)),
    Column("queued_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("failure_reason", Text),
    Column("failure_message", Text),
    UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency"),
    Index("ix_jobs_tenant_created", "tenant", text("created_at DESC"), text("id DESC")),
)

results = Table(
    "results",
    metadata,
    Column(
        "job_id",
        UUID(as_uuid=False),
        ForeignKey("jobs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sealed_result", BYTEA, nullable=False),
    Column("sealed_result_sha256", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("wrapped_key", BYTEA, nullable=False),
    Column("encryption_context", JSONB, nullable=False),
    Column("receipt", JSONB, nullable=False),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("model_sha256", Text, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("tenant", Text, nullable=False),
    Column("actor", Text),
    Column("action", Text, nullable=False),
    # No foreign key: the trail outlives a deleted reservation.
    Column("job_id", UUID(as_uuid=False)),
    Column("outcome", Text, nullable=False),
    Column("detail", Text),
    Index("ix_audit_tenant_at", "tenant", text("at DESC"), text("id DESC")),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("token_sha256", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column(
        "job_id",
        UUID(as_uuid=False),
        ForeignKey("jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
