"""Settings of the results service, from ``OBSCURA_RESULTS_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.broker import Topology
from shared.settings import KmsClientSettings, refuse_placeholders


class ResultsSettings(KmsClientSettings):
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
        refuse_placeholders(
            {
                "OBSCURA_RESULTS_INTERNAL_TOKEN": self.internal_token,
                "OBSCURA_RESULTS_AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            }
        )
        return self

    def topology(self) -> Topology:
        if self.topology_prefix:
            return Topology.prefixed(self.topology_prefix)
        return Topology()
