"""Opening aiobotocore clients, the same way for KMS and S3 in every service.

One botocore session per process (it caches the loaded service models), finite
connect and read timeouts, and botocore's own retries off so that the callers'
retry policy (``shared.retry``) is the only one. Without credentials, botocore's
default chain applies (instance role, IRSA web identity, environment).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


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
) -> AsyncIterator[Any]:
    config = AioConfig(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": 1},
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
