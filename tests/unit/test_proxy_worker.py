from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.enclave_proxy.worker import StaticCredentials, WorkerSupervisor
from shared.enclave_protocol import HandedCredentials, WorkerStatus
from shared.link import LinkClosedError
from tests.unit.proxy_fakes import FakeWorker


class Rotating:
    """Credentials whose expiry is set by the test."""

    def __init__(self, expires_in_s: float) -> None:
        self.expires_in_s = expires_in_s
        self.fetched = 0

    async def fetch(self) -> HandedCredentials:
        self.fetched += 1
        expiry = datetime.now(UTC) + timedelta(seconds=self.expires_in_s)
        return HandedCredentials("AKIAROTATING", f"secret-{self.fetched}", "t", expiry)


def _supervisor(
    worker: FakeWorker, source: object, seen: list[WorkerStatus | None]
) -> WorkerSupervisor:
    async def on_status(status: WorkerStatus | None) -> None:
        seen.append(status)

    return WorkerSupervisor(
        worker,
        source,  # type: ignore[arg-type]
        on_status=on_status,
        timeout_s=1.0,
        refresh_margin_s=60,
    )


async def test_worker_supervisor_hands_credentials_once_while_they_last() -> None:
    worker = FakeWorker(WorkerStatus(ready=True, slots=2, has_credentials=False))
    source = StaticCredentials(HandedCredentials("AKIADEV", "dev-secret"))
    seen: list[WorkerStatus | None] = []
    supervisor = _supervisor(worker, source, seen)

    await supervisor.poll_once()
    worker.status_value = WorkerStatus(ready=True, slots=2, has_credentials=True)
    await supervisor.poll_once()

    assert [c.secret_access_key for c in worker.handed] == ["dev-secret"]
    assert supervisor.ready
    assert len(seen) == 2


async def test_worker_supervisor_refreshes_credentials_near_expiry() -> None:
    worker = FakeWorker(WorkerStatus(ready=True, slots=1, has_credentials=True))
    source = Rotating(expires_in_s=30)  # inside the 60 s margin
    supervisor = _supervisor(worker, source, [])

    await supervisor.poll_once()
    await supervisor.poll_once()

    assert [c.secret_access_key for c in worker.handed] == ["secret-1", "secret-2"]


async def test_worker_supervisor_rehands_after_a_worker_restart() -> None:
    worker = FakeWorker(WorkerStatus(ready=True, slots=1, has_credentials=True))
    source = Rotating(expires_in_s=3600)
    supervisor = _supervisor(worker, source, [])

    await supervisor.poll_once()
    await supervisor.poll_once()
    worker.status_value = WorkerStatus(ready=False, slots=1, has_credentials=False)
    await supervisor.poll_once()

    assert len(worker.handed) == 2


async def test_worker_supervisor_unreachable_worker_is_not_ready() -> None:
    worker = FakeWorker(status_error=LinkClosedError("refused"))
    seen: list[WorkerStatus | None] = []
    supervisor = _supervisor(worker, Rotating(3600), seen)

    assert await supervisor.poll_once() is None
    assert not supervisor.ready
    assert seen == [None]
    assert worker.handed == []
