"""Settings pieces shared by the services that call KMS.

Each service still has one settings class with its own environment prefix; it
inherits these fields and helpers, so ``OBSCURA_ENCRYPTOR_KMS_ENDPOINT_URL`` and
``OBSCURA_RESULTS_KMS_ENDPOINT_URL`` mean the same thing for their own service.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from shared.aws import Credentials
from shared.kms import KmsEndpoint

# Secrets that only ever belong on a developer machine.
PLACEHOLDER_SECRETS = frozenset(
    {"", "test", "testing", "changeme", "secret", "dev", "guest", "postgres"}
    | {"password", "x"}
)


class KmsClientSettings(BaseSettings):
    aws_region: str = "us-east-1"
    kms_endpoint_url: str | None = None
    kms_connect_timeout_s: float = Field(default=3.0, gt=0)
    kms_read_timeout_s: float = Field(default=10.0, gt=0)
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

    def kms_endpoint(self) -> KmsEndpoint:
        return KmsEndpoint(
            region=self.aws_region,
            endpoint_url=self.kms_endpoint_url,
            connect_timeout_s=self.kms_connect_timeout_s,
            read_timeout_s=self.kms_read_timeout_s,
        )

    def credentials(self) -> Credentials | None:
        """The service principal's credentials; None uses the default chain."""
        if self.aws_access_key_id is None or self.aws_secret_access_key is None:
            return None
        token = self.aws_session_token
        return Credentials(
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key.get_secret_value(),
            session_token=token.get_secret_value() if token else None,
        )


def refuse_placeholders(secrets: Mapping[str, SecretStr | None]) -> None:
    """Raise if any named secret holds a development placeholder."""
    for name, value in secrets.items():
        if (
            value is not None
            and value.get_secret_value().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                f"{name} holds a placeholder value outside development;"
                " set a real secret."
            )
