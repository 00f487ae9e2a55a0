"""Settings of the encryptor, from ``OBSCURA_ENCRYPTOR_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.broker import Topology
from shared.envelope import DEFAULT_CHUNK_SIZE
from shared.settings import KmsClientSettings, refuse_placeholders

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 refuses multipart parts below 5 MiB, except the last one."""


class EncryptorSettings(KmsClientSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_ENCRYPTOR_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)

    internal_token: SecretStr = SecretStr("dev")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)

    bucket: str = Field(default="obscura-images", min_length=3, max_length=63)
    s3_endpoint_url: str | None = None
    s3_connect_timeout_s: float = Field(default=3.0, gt=0)
    s3_read_timeout_s: float = Field(default=30.0, gt=0)
    # One part buffer is held per upload in flight, so this size times the
    # concurrent uploads is most of the encryptor's memory under load.
    part_size: int = Field(default=MIN_PART_SIZE, ge=MIN_PART_SIZE)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1)

    hospital_key_id: str = "alias/obscura-hospital"

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    topology_prefix: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    publish_timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> EncryptorSettings:
        if self.environment == "development":
            return self
        refuse_placeholders(
            {
                "OBSCURA_ENCRYPTOR_INTERNAL_TOKEN": self.internal_token,
                "OBSCURA_ENCRYPTOR_AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            }
        )
        return self

    def topology(self) -> Topology:
        if self.topology_prefix:
            return Topology.prefixed(self.topology_prefix)
        return Topology()
