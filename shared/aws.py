"""Opening aiobotocore clients, the same way for KMS and S3 in every service.

One botocore session per process (it caches the loaded service models), finite
connect and read timeouts, and botocore's own retries off so that the callers'
retry policy (``shared.retry``) is the only one. Without credentials, botocore's
default chain applies (instance role, IRSA web identity, environment).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp.abc import AbstractResolver, ResolveResult


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class LoopbackResolver(AbstractResolver):
    """Resolves one host name to 127.0.0.1, and nothing else at all.

    Inside the enclave the KMS endpoint's name must lead to the local tunnel while
    TLS still checks KMS's certificate for that very name; there is no DNS to ask,
    and any other name is an error rather than a silent lookup.
    """

    def __init__(self, host: str) -> None:
        self._host = host.lower()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower() != self._host:
            raise OSError(f"{host} is not the one endpoint this client may reach")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


_SESSION: Any = None


def session() -> Any:
    global _SESSION
    if _SESSION is None:
        _SESSION = get_session()
    return _SESSION


@contextlib.asynccontextmanager
async def open_client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None,
    credentials: Credentials | None,
    connect_timeout_s: float,
    read_timeout_s: float,
    loopback_host: str | None = None,
) -> AsyncIterator[Any]:
    """``loopback_host``: send that name to 127.0.0.1 (the enclave's KMS tunnel)."""
    connector_args: dict[str, Any] = {}
    if loopback_host is not None:
        connector_args["resolver"] = LoopbackResolver(loopback_host)
    config = AioConfig(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": 1},
        connector_args=connector_args or None,
    )
    keys: dict[str, str] = {}
    if credentials is not None:
        keys["aws_access_key_id"] = credentials.access_key_id
        keys["aws_secret_access_key"] = credentials.secret_access_key
        if credentials.session_token:
            keys["aws_session_token"] = credentials.session_token
    async with session().create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=config,
        **keys,
    ) as client:
        yield client
