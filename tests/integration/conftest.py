"""Shared integration fixtures: moto, the attested KMS gate, per-principal clients.

One moto server and one gate run per test session. ``kms_client("enclave")``
opens an aiobotocore KMS client that signs as that principal and talks to the
gate; ``moto_kms_client()`` talks to moto directly in the gate's account, for
checking what the gate did. ``dev_pki`` is the simulated NSM's root the gate
trusts; ``enclave_nsm`` attests over ``ENCLAVE_PCRS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from cryptography.hazmat.primitives.serialization import Encoding

from standins.kms_gate import GateConfig, GateServer
from standins.moto_server import MotoServer
from standins.nsm import DevPki, SimulatedNsm

ACCOUNT_ID = "111122223333"
REGION = "us-east-1"
ENCLAVE_PCRS: Mapping[int, bytes] = {
    index: hashlib.sha384(f"obscura-test-pcr{index}".encode()).digest()
    for index in (0, 1, 2)
}

# One session for every client: it caches the loaded KMS service model.
_SESSION = get_session()

KmsClientFactory = Callable[[str], contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class GatePrincipal:
    name: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:role/obscura-{self.name}"


PRINCIPALS: Mapping[str, GatePrincipal] = {
    name: GatePrincipal(name, f"AKIAOBSCURA{name.upper():0<9}"[:20], f"secret-{name}")
    for name in ("admin", "encryptor", "enclave", "results", "sealer")
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def dev_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev state folder a worker process started by a test is pointed at."""
    return tmp_path_factory.mktemp("dev-state")


@pytest.fixture(scope="session")
def dev_pki(dev_state_dir: Path) -> DevPki:
    return DevPki.load_or_create(dev_state_dir)


@pytest.fixture(scope="session")
def gate_principals() -> Mapping[str, GatePrincipal]:
    return PRINCIPALS


@pytest.fixture(scope="session")
def gate_config(
    moto_server: MotoServer, dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> GateConfig:
    folder = tmp_path_factory.mktemp("kms-gate")
    (folder / "dev-root.pem").write_bytes(
        dev_pki.root_certificate.public_bytes(Encoding.PEM)
    )
    document = {
        "upstream": moto_server.url,
        "account_id": ACCOUNT_ID,
        "attestation_root_pem": "dev-root.pem",
        "principals": {
            p.access_key_id: {"arn": p.arn, "secret_access_key": p.secret_access_key}
            for p in PRINCIPALS.values()
        },
        "upstream_timeout_s": 5.0,
    }
    path = Path(folder / "gate.json")
    path.write_text(json.dumps(document, indent=2))
    return GateConfig.load(path)


@pytest.fixture(scope="session")
def kms_gate(gate_config: GateConfig) -> Iterator[GateServer]:
    server = GateServer(gate_config).start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def open_kms_client(
    endpoint_url: str, access_key_id: str, secret: str, *, moto_account: bool = False
) -> AsyncIterator[Any]:
    config = AioConfig(
        connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 1}
    )
    async with _SESSION.create_client(
        "kms",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=config,
    ) as client:
        if moto_account:
            client.meta.events.register("before-sign.kms", _moto_account_header)
        yield client


def _moto_account_header(request: Any, **_: Any) -> None:
    request.headers["x-moto-account-id"] = ACCOUNT_ID


@pytest.fixture
def kms_client(kms_gate: GateServer) -> KmsClientFactory:
    """``async with kms_client("enclave") as kms:`` signs as that principal."""

    def open_client(name: str) -> contextlib.AbstractAsyncContextManager[Any]:
        principal = PRINCIPALS[name]
        return open_kms_client(
            kms_gate.url, principal.access_key_id, principal.secret_access_key
        )

    return open_client


@pytest.fixture
def moto_kms_client(
    moto_server: MotoServer,
) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """A client straight to moto, in the gate's account, bypassing every policy."""
    return lambda: open_kms_client(
        moto_server.url, "AKIAMOTODIRECT000000", "x", moto_account=True
    )


@pytest.fixture
def enclave_nsm(dev_pki: DevPki) -> SimulatedNsm:
    return SimulatedNsm(dev_pki, ENCLAVE_PCRS)
