"""Settings of the enclave proxy, from ``OBSCURA_PROXY_*`` variables.

One proxy runs per enclave on the parent instance. In development the worker link
and the KMS relay use loopback TCP and the KMS upstream is the local attested
stand-in; in production both are vsock and the upstream is the regional KMS
endpoint, the only host the relay will ever connect to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.broker import Topology
from shared.retry import RetryPolicy
from shared.settings import PLACEHOLDER_SECRETS

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ProxySettings(BaseSettings):
    """Every limit, timeout and endpoint of one proxy; secrets stay out of repr."""

    model_config = SettingsConfigDict(env_prefix="OBSCURA_PROXY_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    topology_prefix: str | None = None
    delivery_limit: int = Field(default=5, ge=1, le=100)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    broker_connect_timeout_s: float = Field(default=10.0, gt=0)

    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_connect_timeout_s: float = Field(default=3.0, gt=0)
    s3_read_timeout_s: float = Field(default=30.0, gt=0)
    s3_piece_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=8 * 1024 * 1024)

    worker_transport: Literal["vsock", "tcp"] = "vsock"
    worker_cid: int = Field(default=16, ge=4)
    worker_port: int = Field(default=5005, ge=1, le=65535)
    worker_host: str = "127.0.0.1"
    status_interval_s: float = Field(default=2.0, gt=0)
    status_timeout_s: float = Field(default=3.0, gt=0)

    relay_transport: Literal["vsock", "tcp"] = "vsock"
    relay_port: int = Field(default=8000, ge=0, le=65535)
    relay_max_connections: int = Field(default=32, ge=1, le=1024)
    relay_idle_timeout_s: float = Field(default=60.0, gt=0)
    kms_upstream_host: str | None = None
    kms_upstream_port: int = Field(default=443, ge=1, le=65535)

    # Development hands the worker the enclave principal's static keys; production
    # leaves these unset and freezes the instance role from botocore's default chain.
    worker_access_key_id: SecretStr | None = None
    worker_secret_access_key: SecretStr | None = None
    credentials_refresh_margin_s: float = Field(default=300.0, ge=0)

    job_timeout_s: float = Field(default=120.0, gt=0)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=10.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)

    health_host: str = "127.0.0.1"
    health_port: int = Field(default=9102, ge=0, le=65535)

    @model_validator(mode="after")
    def _check(self) -> ProxySettings:
        _check_pairs(self)
        if self.environment == "production":
            _check_production(self)
        return self

    def topology(self) -> Topology:
        if self.topology_prefix:
            return Topology.prefixed(
                self.topology_prefix, delivery_limit=self.delivery_limit
            )
        return Topology(delivery_limit=self.delivery_limit)

    def kms_upstream(self) -> tuple[str, int]:
        """The single host the KMS relay connects to."""
        host = self.kms_upstream_host or f"kms.{self.s3_region}.amazonaws.com"
        return host, self.kms_upstream_port

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_delay_s=self.retry_base_delay_s, max_delay_s=self.retry_max_delay_s
        )


def _check_pairs(settings: ProxySettings) -> None:
    pairs = {
        "s3_access_key_id/s3_secret_access_key": (
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
        ),
        "worker_access_key_id/worker_secret_access_key": (
            settings.worker_access_key_id,
            settings.worker_secret_access_key,
        ),
    }
    for names, (key_id, secret) in pairs.items():
        if (key_id is None) != (secret is None):
            raise ValueError(
                f"{names} must be set together or not at all; unset both to use "
                "botocore's default credential chain."
            )


def _check_production(settings: ProxySettings) -> None:
    password = _amqp_password(settings.amqp_url.get_secret_value())
    if password in PLACEHOLDER_SECRETS:
        raise ValueError(
            "the AMQP URL carries a placeholder password in production; give the "
            "proxy its own broker user."
        )
    for secret in (settings.s3_secret_access_key, settings.worker_secret_access_key):
        if secret is not None and secret.get_secret_value() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "a placeholder AWS secret is set in production; unset it so the "
                "instance role applies."
            )
    if settings.worker_transport != "vsock" or settings.relay_transport != "vsock":
        raise ValueError(
            "production needs vsock for the worker link and the KMS relay; TCP is "
            "for development only."
        )
    host = settings.kms_upstream()[0]
    if host in LOOPBACK_HOSTS:
        raise ValueError(
            f"KMS upstream {host} is a loopback stand-in; production relays to "
            "kms.<region>.amazonaws.com."
        )


def _amqp_password(url: str) -> str:
    """The password part of an AMQP URL, or '' when there is none."""
    credentials, sep, _ = url.partition("://")[2].rpartition("@")
    if not sep:
        return ""
    return credentials.partition(":")[2]
