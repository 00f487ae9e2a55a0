"""Settings of the ``obscura`` command, from ``OBSCURA_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import KmsClientSettings, refuse_placeholders


class CliSettings(KmsClientSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    state_dir: Path = Path(".obscura")

    vendor_key_id: str | None = None
    hospital_key_id: str | None = None

    account_id: str = "111122223333"
    vendor_admin_arn: str | None = None
    vendor_sealer_arn: str | None = None
    enclave_arn: str | None = None
    hospital_admin_arn: str | None = None
    encryptor_arn: str | None = None
    results_arn: str | None = None

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> CliSettings:
        if self.environment != "development":
            refuse_placeholders(
                {"OBSCURA_AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key}
            )
        return self

    def role_arn(self, explicit: str | None, role: str) -> str:
        return explicit or f"arn:aws:iam::{self.account_id}:role/obscura-{role}"
