"""Settings of the results service, from ``OBSCURA_RESULTS_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.broker import Topology
from shared.kms import Credentials, KmsEndpoint

# Secrets that only ever belong on a developer machine.
PLACEHOLDER_SECRETS = frozenset(
    {"", "test", "testing", "changeme", "secret", "dev", "guest", "postgres"}
)


class ResultsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_RESULTS_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=0, le=65535)

    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/obscura"
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_timeout_s: float = Field(default=5.0, gt=0)

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    topology_prefix: str | None = None
    prefetch: int = Field(default=32, ge=1, le=1024)
    requeue_backoff_s: float = Field(default=1.0, ge=0)

    internal_token: SecretStr = SecretStr("dev")

    aws_region: str = "us-east-1"
    kms_endpoint_url: str | None = None
    kms_connect_timeout_s: float = Field(default=3.0, gt=0)
    kms_read_timeout_s: float = Field(default=10.0, gt=0)
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

    # A job still "received" after this long lost its upload to a gateway crash and
    # is failed with reason upload_abandoned; it must exceed the longest upload.
    received_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    sweep_interval_s: float = Field(default=60.0, gt=0)

    page_limit_default: int = Field(default=50, ge=1)
    page_limit_max: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> ResultsSettings:
        if self.environment == "development":
            return self
        secrets = {"OBSCURA_RESULTS_INTERNAL_TOKEN": self.internal_token}
        if self.aws_secret_access_key is not None:
            secrets["OBSCURA_RESULTS_AWS_SECRET_ACCESS_KEY"] = (
                self.aws_secret_access_key
            )
        for name, value in secrets.items():
            if value.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"{name} holds a placeholder value outside development;"
                    " set a real secret."
                )
        return self

    def topology(self) -> Topology:
        if self.topology_prefix:
            return Topology.prefixed(self.topology_prefix)
        return Topology()

    def kms_endpoint(self) -> KmsEndpoint:
        return KmsEndpoint(
            region=self.aws_region,
            endpoint_url=self.kms_endpoint_url,
            connect_timeout_s=self.kms_connect_timeout_s,
            read_timeout_s=self.kms_read_timeout_s,
        )

    def credentials(self) -> Credentials | None:
        """The results principal's credentials; None uses the default chain."""
        if self.aws_access_key_id is None or self.aws_secret_access_key is None:
            return None
        token = self.aws_session_token
        return Credentials(
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key.get_secret_value(),
            session_token=token.get_secret_value() if token else None,
        )
