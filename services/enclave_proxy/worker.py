"""Supervision of the one enclave worker: status polls and credential hand-off.

The supervisor asks the worker for its status on a fixed interval, each call
bounded by a timeout, and hands it short-lived AWS credentials when the worker
has none or the ones it holds expire within the refresh margin. Every status
change is passed to a callback, which the service uses to start or stop
consuming and to size the prefetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiobotocore.session import get_session

from shared.enclave_protocol import (
    HandedCredentials,
    JobOutcome,
    JobRequest,
    WorkerStatus,
)
from shared.errors import ObscuraError, PermanentDependencyError, Reason
from shared.logging import get_logger

log = get_logger(__name__)

StatusCallback = Callable[[WorkerStatus | None], Awaitable[None]]


class Worker(Protocol):
    """What the proxy needs of its worker; ``WorkerClient`` implements it."""

    async def status(self) -> WorkerStatus: ...

    async def hand_credentials(self, credentials: HandedCredentials) -> None: ...

    async def run_job(
        self, request: JobRequest, body: AsyncIterable[bytes], *, timeout_s: float
    ) -> JobOutcome: ...


class CredentialSource(Protocol):
    async def fetch(self) -> HandedCredentials:
        """Credentials for the worker, with their expiry when they have one."""
        ...


class StaticCredentials:
    """Development: the enclave principal's fixed keys, which never expire."""

    def __init__(self, credentials: HandedCredentials) -> None:
        self._credentials = credentials

    async def fetch(self) -> HandedCredentials:
        return self._credentials


class DefaultChainCredentials:
    """Production: botocore's default chain (the instance role), frozen."""

    def __init__(self) -> None:
        self._session: Any = get_session()

    async def fetch(self) -> HandedCredentials:
        resolved = await self._session.get_credentials()
        if resolved is None:
            raise PermanentDependencyError(
                "botocore's default chain found no credentials for the worker; "
                "attach an instance role or set the worker's static keys.",
                reason=Reason.ACCESS_DENIED,
            )
        frozen = await resolved.get_frozen_credentials()
        # Refreshable credentials keep their expiry in a private field; static
        # ones (environment, config file) have none and are handed once.
        expiry = getattr(resolved, "_expiry_time", None)
        return HandedCredentials(
            access_key_id=frozen.access_key,
            secret_access_key=frozen.secret_key,
            session_token=frozen.token,
            expiration=expiry if isinstance(expiry, datetime) else None,
        )


class WorkerSupervisor:
    """Polls the worker and keeps it supplied with credentials."""

    def __init__(
        self,
        worker: Worker,
        credentials: CredentialSource,
        *,
        on_status: StatusCallback,
        interval_s: float = 2.0,
        timeout_s: float = 3.0,
        refresh_margin_s: float = 300.0,
    ) -> None:
        self._worker = worker
        self._credentials = credentials
        self._on_status = on_status
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._refresh_margin_s = refresh_margin_s
        self._handed: HandedCredentials | None = None
        self.status: WorkerStatus | None = None
        self._polled = False
        self._last_key: tuple[bool, str | None] | None = None

    @property
    def ready(self) -> bool:
        return self.status is not None and self.status.ready

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval_s)

    async def poll_once(self) -> WorkerStatus | None:
        status = await self._fetch_status()
        if status is not None and self._needs_credentials(status):
            await self._hand_credentials()
        self._note(status)
        await self._on_status(status)
        return status

    async def _fetch_status(self) -> WorkerStatus | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._worker.status()
        except (ObscuraError, TimeoutError) as exc:
            if self.status is not None or not self._polled:
                log.warning("worker_status_failed", error=type(exc).__name__)
            return None

    def _needs_credentials(self, status: WorkerStatus) -> bool:
        if not status.has_credentials or self._handed is None:
            return True
        return self._handed.expires_within(self._refresh_margin_s)

    async def _hand_credentials(self) -> None:
        try:
            credentials = await self._credentials.fetch()
            async with asyncio.timeout(self._timeout_s):
                await self._worker.hand_credentials(credentials)
        except (ObscuraError, TimeoutError) as exc:
            log.warning("credentials_handoff_failed", error=type(exc).__name__)
            return
        self._handed = credentials
        expires = credentials.expiration
        log.info(
            "credentials_handed",
            expires_in_s=(
                round((expires - datetime.now(UTC)).total_seconds())
                if expires
                else None
            ),
        )

    def _note(self, status: WorkerStatus | None) -> None:
        """Keep the latest status; log only when reachability or readiness moves."""
        self.status = status
        key = None if status is None else (status.ready, status.reason)
        if self._polled and key == self._last_key:
            return
        self._polled, self._last_key = True, key
        log.info(
            "worker_status",
            reachable=status is not None,
            ready=bool(status and status.ready),
            reason=status.reason if status else None,
            slots=status.slots if status else 0,
        )
