"""The whole mesh as separate processes, started once for this folder's tests.

Runs ``standins.devmesh`` the way ``obscura dev up`` does, on free ports, with its
own database, broker topology and bucket, so it never touches a developer's mesh.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from obscura_cli.dev import down, up
from services.results.tokens import mint_token

MAMMOGRAMS = Path(__file__).resolve().parents[3].parent / "shared/data/mammograms"


@dataclass(frozen=True)
class Mesh:
    state_dir: Path
    info: dict[str, Any]
    database: str
    prefix: str
    bucket: str

    @property
    def gateway(self) -> str:
        return str(self.info["gateway_url"])

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def token(self, tenant: str, *scopes: str) -> str:
        return mint_token(self.info["database_url"], tenant, scopes, "test")

    def admin_token(self) -> str:
        return (self.state_dir / "dev-token").read_text().strip()


async def _drop_database(name: str) -> None:
    connection = await asyncpg.connect(
        "postgresql://postgres@127.0.0.1:5432/postgres", timeout=5
    )
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def _delete_topology(prefix: str) -> None:
    from shared.broker import Topology, connect, delete

    connection = await connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        channel = await connection.channel()
        await delete(channel, Topology.prefixed(prefix))
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    state_dir = tmp_path_factory.mktemp("mesh-state")
    suffix = uuid.uuid4().hex[:8]
    database, prefix, bucket = (
        f"obscura_test_{suffix}",
        f"test-mesh-{suffix}",
        f"mesh-{suffix}",
    )
    info = up(
        state_dir,
        free_ports=True,
        timeout_s=240,
        extra_args=(
            "--database",
            database,
            "--topology-prefix",
            prefix,
            "--bucket",
            bucket,
        ),
    )
    try:
        yield Mesh(state_dir, info, database, prefix, bucket)
    finally:
        down(state_dir, quiet=True)
        asyncio.run(_drop_database(database))
        asyncio.run(_delete_topology(prefix))


def sample(name: str) -> Path:
    path = MAMMOGRAMS / name
    if not path.exists():
        pytest.skip(f"sample mammogram {path} is not on this machine")
    return path
