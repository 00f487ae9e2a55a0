"""The worker as its own process, started the way a developer starts it.

``python -m standins.enclave`` measures the files it actually runs. Started from
a copy of the tree with one byte changed in one file, it attests to another PCR0,
KMS refuses it the model key, and it reports not-ready with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import services
import shared
import standins
from shared.enclave_protocol import HandedCredentials, WorkerClient, WorkerStatus
from shared.link import LinkError, TcpTransport
from shared.relay import Relay, tcp_connector
from standins.kms_gate import GateServer
from tests.integration.conftest import PRINCIPALS
from tests.integration.enclave_setup import Provisioned, provision

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def copy_tree(root: Path, *, flip: bool) -> Path:
    for package in (services, shared, standins):
        source = Path(package.__file__).parent
        shutil.copytree(
            source, root / source.name, ignore=shutil.ignore_patterns("__pycache__")
        )
    if flip:
        victim = root / "services" / "enclave_worker" / "preprocess.py"
        data = bytearray(victim.read_bytes())
        data[-1:] = b" \n" if data[-1:] == b"\n" else b"\n"
        victim.write_bytes(bytes(data))
    return root


async def worker_status(
    tree: Path, provisioned: Provisioned, state_dir: Path
) -> AsyncIterator[WorkerStatus]:
    gate = urlsplit(provisioned.gate.url)
    relay = Relay(tcp_connector(gate.hostname or "", gate.port or 0), name="kms")
    relay_server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OBSCURA_DEV_STATE_DIR": str(state_dir),
        "OBSCURA_WORKER_TRANSPORT": "tcp",
        "OBSCURA_WORKER_LISTEN_PORT": str(port),
        "OBSCURA_WORKER_KMS_RELAY_PORT": str(relay_server.sockets[0].getsockname()[1]),
        "OBSCURA_WORKER_KMS_SCHEME": "http",
        "OBSCURA_WORKER_BUNDLE_DIR": str(provisioned.bundle),
        "OBSCURA_WORKER_HOSPITAL_KEY_ID": provisioned.hospital_key,
        "OBSCURA_WORKER_TORCH_THREADS": "1",
    }
    log = tree / "worker.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "standins.enclave",
            env=env, cwd=tree, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    client = WorkerClient(TcpTransport("127.0.0.1", port))
    enclave = PRINCIPALS["enclave"]
    try:
        async with asyncio.timeout(90):
            while True:
                try:
                    await client.hand_credentials(
                        HandedCredentials(
                            enclave.access_key_id, enclave.secret_access_key
                        )
                    )
                    break
                except LinkError:
                    assert process.returncode is None, log.read_text()
                    await asyncio.sleep(0.2)
            while True:
                status = await client.status()
                if status.reason not in ("awaiting_credentials", "unlocking"):
                    break
                await asyncio.sleep(0.1)
        yield status
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        relay_server.close()
        await relay.aclose()


@pytest.fixture
async def provisioned(kms_gate: GateServer, tmp_path: Path) -> Provisioned:
    return await provision(kms_gate, tmp_path)


async def test_worker_process_from_the_measured_tree_becomes_ready(
    provisioned: Provisioned, dev_state_dir: Path, tmp_path: Path
) -> None:
    tree = copy_tree(tmp_path / "image", flip=False)
    async for status in worker_status(tree, provisioned, dev_state_dir):
        assert status.ready, status.message
        assert status.pcr0 == provisioned.pcrs[0].hex()


async def test_worker_process_with_one_changed_byte_is_not_ready(
    provisioned: Provisioned, dev_state_dir: Path, tmp_path: Path
) -> None:
    tree = copy_tree(tmp_path / "image", flip=True)
    async for status in worker_status(tree, provisioned, dev_state_dir):
        assert not status.ready
        assert status.reason == "model_unavailable"
        assert "AccessDeniedException" in (status.message or "")
        assert status.pcr0 != provisioned.pcrs[0].hex()
