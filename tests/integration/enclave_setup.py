"""Enclave test set-up on top of ``standins.provision``: the test principals, and
helpers to seal images as the encryptor and open results as the results service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.envelope import seal_bytes, unseal_bytes
from standins import provision as dev
from standins.kms_gate import GateServer
from tests.integration.conftest import PRINCIPALS

TEST_PRINCIPALS: Mapping[str, dev.DevPrincipal] = {
    name: dev.DevPrincipal(name, p.arn, p.access_key_id, p.secret_access_key)
    for name, p in PRINCIPALS.items()
}


@dataclass(frozen=True)
class Provisioned:
    gate: GateServer
    keys: dev.Provisioned

    @property
    def bundle(self) -> Path:
        return self.keys.bundle

    @property
    def pcrs(self) -> Mapping[int, bytes]:
        return self.keys.pcrs

    @property
    def hospital_key(self) -> str:
        return self.keys.hospital_key

    async def seal_image(self, data: bytes, tenant: str, job_id: str) -> bytes:
        context = {"purpose": "image", "tenant": tenant, "job_id": job_id}
        async with dev.keys_as(self.gate.url, TEST_PRINCIPALS["encryptor"]) as keys:
            sealed = await seal_bytes(data, keys, self.hospital_key, context)
        return bytes(sealed)

    async def open_result(self, sealed: bytes, tenant: str, job_id: str) -> Any:
        context = {"purpose": "result", "tenant": tenant, "job_id": job_id}
        async with dev.keys_as(self.gate.url, TEST_PRINCIPALS["results"]) as keys:
            plaintext = await unseal_bytes(sealed, keys, context)
        return json.loads(bytes(plaintext))


async def provision(gate: GateServer, folder: Path) -> Provisioned:
    return Provisioned(gate, await dev.provision(gate.url, TEST_PRINCIPALS, folder))


async def pieces(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
