"""Settings of the gateway, from ``OBSCURA_GATEWAY_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import PLACEHOLDER_SECRETS

# Secrets that only ever belong on a developer machine.


class GatewaySettings(BaseSettings):
    """Gateway settings; the connection and pacing ones defend against slow clients.

    ``limit_concurrency``: open connections plus running requests past which
    uvicorn answers 503 instead of accepting more work (None: unbounded).
    ``timeout_keep_alive_s``: an idle kept-alive connection is closed after this.
    ``header_timeout_s``: a connection that has not sent its request line and
    headers within this is closed, so byte-a-second clients cannot hold slots.
    ``max_header_bytes``: the request line and headers may not exceed this (431).
    ``body_idle_timeout_s``: an upload that sends nothing for this long is
    answered 408 ``request_timeout``.
    ``min_body_rate_bps`` and ``body_rate_grace_s``: once an upload is older than
    the grace period, its average rate must stay above the minimum or it is
    answered 408; this catches clients that trickle a byte at a time.
    """

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

    limit_concurrency: int | None = Field(default=1000, ge=1)
    timeout_keep_alive_s: int = Field(default=5, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    min_body_rate_bps: int = Field(default=4096, ge=0)
    body_rate_grace_s: float = Field(default=10.0, ge=0)

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
