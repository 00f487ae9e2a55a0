"""Settings of the enclave worker, from ``OBSCURA_WORKER_*`` variables.

In a Nitro Enclave these come from the image itself (the EIF's environment), so
they are measured into PCR0 with the rest of the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSCURA_WORKER_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"

    transport: Literal["vsock", "tcp"] = "vsock"
    listen_port: int = Field(default=5005, ge=0, le=65535)
    tcp_host: str = "127.0.0.1"

    # KMS traffic leaves through the proxy's relay: vsock port on the parent, or a
    # loopback TCP port in development. The worker's HTTP client talks to a local
    # tunnel that carries each connection there.
    kms_relay_port: int = Field(default=8000, ge=1, le=65535)
    kms_tunnel_port: int = Field(default=0, ge=0, le=65535)
    kms_scheme: Literal["https", "http"] = "https"
    kms_host: str | None = None
    aws_region: str = "us-east-1"
    kms_connect_timeout_s: float = 3.0
    kms_read_timeout_s: float = 10.0

    bundle_dir: Path = Path("/opt/obscura/model")
    hospital_key_id: str = "alias/obscura-hospital"

    slots: int = Field(default=2, ge=1, le=64)
    torch_threads: int = Field(default=2, ge=1, le=256)
    job_timeout_s: float = Field(default=120.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_sealed_image_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)

    def kms_hostname(self) -> str:
        """The name TLS checks KMS's certificate against; it resolves to the tunnel."""
        if self.kms_host:
            return self.kms_host
        if self.kms_scheme == "http":
            return "127.0.0.1"
        return f"kms.{self.aws_region}.amazonaws.com"

    def kms_endpoint_url(self, tunnel_port: int) -> str:
        return f"{self.kms_scheme}://{self.kms_hostname()}:{tunnel_port}"
