"""Settings of the ``obscura`` command, from ``OBSCURA_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kms import Credentials, KmsEndpoint

# Secrets that only ever belong on a developer machine.
PLACEHOLDER_SECRETS = frozenset({"", "test", "testing", "changeme", "secret", "dev"})


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    state_dir: Path = Path(".obscura")

    aws_region: str = "us-east-1"
    kms_endpoint_url: str | None = None
    kms_connect_timeout_s: float = 3.0
    kms_read_timeout_s: float = 10.0
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

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
        secret = self.aws_secret_access_key
        if (
            self.environment != "development"
            and secret is not None
            and secret.get_secret_value().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                "OBSCURA_AWS_SECRET_ACCESS_KEY holds a placeholder value outside"
                " development; set a real secret or leave it unset to use the"
                " default credential chain."
            )
        return self

    def role_arn(self, explicit: str | None, role: str) -> str:
        return explicit or f"arn:aws:iam::{self.account_id}:role/obscura-{role}"

    def kms_endpoint(self) -> KmsEndpoint:
        return KmsEndpoint(
            region=self.aws_region,
            endpoint_url=self.kms_endpoint_url,
            connect_timeout_s=self.kms_connect_timeout_s,
            read_timeout_s=self.kms_read_timeout_s,
        )

    def credentials(self) -> Credentials | None:
        if self.aws_access_key_id is None or self.aws_secret_access_key is None:
            return None
        token = self.aws_session_token
        return Credentials(
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key.get_secret_value(),
            session_token=token.get_secret_value() if token else None,
        )
