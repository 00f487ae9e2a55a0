"""Settings of the gateway, from ``OBSCURA_GATEWAY_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that only ever belong on a developer machine.
PLACEHOLDER_SECRETS = frozenset(
    {"", "test", "testing", "changeme", "secret", "dev", "guest", "postgres"}
)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_GATEWAY_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    internal_token: SecretStr = SecretStr("dev")
    results_url: str = "http://127.0.0.1:8082"
    encryptor_url: str = "http://127.0.0.1:8081"
    results_timeout_s: float = Field(default=5.0, gt=0)
    encryptor_timeout_s: float = Field(default=60.0, gt=0)
    auth_cache_ttl_s: float = Field(default=30.0, ge=0)
    auth_cache_size: int = Field(default=10_000, ge=1)

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    dicom_header_bytes: int = Field(default=1024 * 1024, ge=4096)
    max_form_overhead_bytes: int = Field(default=64 * 1024, ge=1024)
    max_parts: int = Field(default=8, ge=2, le=64)
    max_field_bytes: int = Field(default=1024, ge=64)
    default_model: str = "nyu-gmic"

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> GatewaySettings:
        if self.environment == "development":
            return self
        if self.internal_token.get_secret_value().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "OBSCURA_GATEWAY_INTERNAL_TOKEN holds a placeholder value outside"
                " development; set a real secret."
            )
        return self
