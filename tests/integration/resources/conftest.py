"""A mesh whose services run with asyncio debug mode, and memory probes on it.

The mesh is the one ``tests/integration/mesh`` starts, with one difference: its
processes inherit ``tests.loopdebug.debug_environment()``, so every service logs
each callback that holds its event loop longer than 0.1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from obscura_cli.dev import down, up
from shared.cms import generate_recipient_key, public_key_der
from shared.envelope import unseal
from shared.keys import Recipient
from shared.kms import AwsKeyService, KmsEndpoint
from standins.devstate import load_or_create_principals
from standins.nsm import DevPki, SimulatedNsm
from tests.integration.mesh.conftest import Mesh, _delete_topology, _drop_database
from tests.loopdebug import SERVICES, LoopCpuSampler, debug_environment

MIB = 1024 * 1024
DEPRIORITISED = ("enclave-worker", "moto", "kms-gate")


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    state_dir = tmp_path_factory.mktemp("resources-mesh")
    suffix = uuid.uuid4().hex[:8]
    database, prefix, bucket = (
        f"obscura_res_{suffix}",
        f"test-res-{suffix}",
        f"res-{suffix}",
    )
    extra = ("--database", database, "--topology-prefix", prefix, "--bucket", bucket)
    with debug_environment():
        info = up(state_dir, free_ports=True, timeout_s=240, extra_args=extra)
    try:
        started = Mesh(state_dir, info, database, prefix, bucket)
        for name in DEPRIORITISED:
            deprioritise(service_pid(started, name))
        yield started
    finally:
        down(state_dir, quiet=True)
        asyncio.run(_drop_database(database))
        asyncio.run(_delete_topology(prefix))


@pytest.fixture(scope="session", autouse=True)
def loop_cpu(mesh: Mesh) -> Iterator[LoopCpuSampler]:
    """CPU time of every service's event-loop thread, for all this folder's tests."""
    sampler = LoopCpuSampler({name: service_pid(mesh, name) for name in SERVICES})
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def deprioritise(pid: int) -> None:
    """Lowest CPU priority for every thread of a process (nice is per thread).

    In production the enclave has vCPUs of its own and S3 and KMS run elsewhere;
    on a 2-core test machine their CPU-bound threads would otherwise preempt the
    event loops under test, and asyncio reports wall time, not CPU time.
    """
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), 19)


def service_pid(mesh: Mesh, name: str) -> int:
    state = json.loads((mesh.run_dir / "state.json").read_text())
    for service in state["services"]:
        if service["name"] == name and service["pid"]:
            return int(service["pid"])
    raise AssertionError(f"service {name!r} has no pid in state.json: {state}")


def status_kib(pid: int, field_name: str) -> int:
    """One ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field_name}")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class RssSampler:
    """Samples VmRSS of some processes from a thread until stopped."""

    pids: dict[str, int]
    interval_s: float = 0.02
    baseline: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    hwm_reset: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], status_kib(pid, "VmRSS"))

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self.baseline = {n: status_kib(p, "VmRSS") for n, p in self.pids.items()}
        self.peak = dict(self.baseline)
        self.hwm_reset = all(reset_peak(pid) for pid in self.pids.values())
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            if self.hwm_reset:
                for name, pid in self.pids.items():
                    hwm = status_kib(pid, "VmHWM")
                    self.peak[name] = max(self.peak[name], hwm)

    def growth_mib(self, name: str) -> float:
        return (self.peak[name] - self.baseline[name]) / 1024


@contextlib.asynccontextmanager
async def s3_client(mesh: Mesh) -> AsyncIterator[object]:
    principal = load_or_create_principals(mesh.state_dir)["enclave"]
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{mesh.info['ports']['moto']}",
        aws_access_key_id=principal.access_key_id,
        aws_secret_access_key=principal.secret_access_key,
    ) as s3:
        yield s3


async def unsealed_sha256(mesh: Mesh, tenant: str, job_id: str) -> tuple[str, int]:
    """Hash of a job's image as the enclave would open it: attested, streamed."""
    nsm = SimulatedNsm(
        DevPki.load_or_create(mesh.state_dir), {0: bytes.fromhex(mesh.info["pcr0"])}
    )
    private_key = generate_recipient_key()
    document = nsm.attest(public_key=public_key_der(private_key), nonce=b"r" * 16)
    principal = load_or_create_principals(mesh.state_dir)["enclave"]
    endpoint = KmsEndpoint(
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{mesh.info['ports']['kms_gate']}",
    )
    context = {"purpose": "image", "tenant": tenant, "job_id": job_id}
    key = f"tenants/{tenant}/jobs/{job_id}/image.sealed"
    digest, size = hashlib.sha256(), 0
    async with (
        s3_client(mesh) as s3,
        AwsKeyService.connect(endpoint, principal.credentials()) as keys,
    ):
        got = await s3.get_object(Bucket=mesh.bucket, Key=key)  # type: ignore[attr-defined]
        body = got["Body"]

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await body.read(MIB):
                yield piece

        recipient = Recipient(document, private_key)
        async for plain in unseal(pieces(), keys, context, recipient=recipient):
            digest.update(plain)
            size += len(plain)
    return digest.hexdigest(), size
