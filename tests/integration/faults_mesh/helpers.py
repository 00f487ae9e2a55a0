"""Driving and inspecting a mesh under faults: submit, kill, tap, count."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.integration.faults.broker_side import _ctl
from tests.integration.mesh.conftest import Mesh

ALL = ("jobs:submit", "jobs:read", "results:read", "results:decrypt")


def client(mesh: Mesh, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=mesh.gateway, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def submit_png(
    http: httpx.Client, data: bytes, view: str = "L-CC", key: str | None = None
) -> str | None:
    headers = {"Idempotency-Key": key} if key else {}
    try:
        answer = http.post(
            "/v1/jobs",
            data={"view": view},
            files={"file": ("image.png", data, "image/png")},
            headers=headers,
        )
    except httpx.TransportError:
        return None  # the gateway itself went away
    if answer.status_code not in (200, 202):
        return None
    job_id: str = answer.json()["job_id"]
    return job_id


def submit_until_accepted(
    http: httpx.Client, data: bytes, view: str, key: str, timeout_s: float = 120
) -> str:
    """What a PACS does: retry under one idempotency key until the job is taken."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job_id = submit_png(http, data, view, key)
        if job_id is not None:
            return job_id
        time.sleep(0.5)
    raise AssertionError(f"submission {key} was not accepted within {timeout_s} s")


def service_pid(mesh: Mesh, name: str) -> int:
    state = json.loads((mesh.run_dir / "state.json").read_text())
    services = state.get("services", state)
    entry = services[name] if isinstance(services, dict) else None
    if entry is None:
        entry = next(s for s in services if s["name"] == name)
    return int(entry["pid"])


def kill(mesh: Mesh, name: str) -> int:
    pid = service_pid(mesh, name)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_restarted(mesh: Mesh, name: str, old_pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if service_pid(mesh, name) not in (old_pid, 0):
                return
        except (KeyError, StopIteration, ValueError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted within {timeout_s} s")


async def rows(mesh: Mesh, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:5432/{mesh.database}", timeout=5
    )
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def queue_depths(mesh: Mesh) -> dict[str, int]:
    """Ready plus unacknowledged messages of this mesh's queues."""
    depths = {}
    listing = _ctl("list_queues", "name", "messages")
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if name.startswith(mesh.prefix + ".") and count.isdigit():
            depths[name] = int(count)
    return depths


@dataclass
class Tally:
    """What became of every accepted job, as the issue asks to count it."""

    accepted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"accepted={self.accepted} succeeded={self.succeeded} "
            f"failed={dict(self.failed)} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} stuck={len(self.stuck)}"
        )


async def tally(mesh: Mesh, job_ids: list[str]) -> Tally:
    found = {
        str(r["id"]): (r["status"], r["failure_reason"])
        for r in await rows(
            mesh,
            "SELECT id, status, failure_reason FROM jobs WHERE id = ANY($1::uuid[])",
            job_ids,
        )
    }
    per_job = {
        str(r["job_id"]): r["n"]
        for r in await rows(
            mesh,
            "SELECT job_id, count(*) AS n FROM results"
            " WHERE job_id = ANY($1::uuid[]) GROUP BY job_id",
            job_ids,
        )
    }
    result = Tally(accepted=len(job_ids))
    for job_id in job_ids:
        if job_id not in found:
            result.lost.append(job_id)
            continue
        status, reason = found[job_id]
        if status == "succeeded":
            result.succeeded += 1
            if per_job.get(job_id) != 1:
                result.duplicated.append(job_id)
        elif status == "failed":
            result.failed[reason or "no_reason"] += 1
        else:
            result.stuck.append(job_id)
    result.duplicated += [j for j, n in per_job.items() if n > 1]
    return result


def wait_terminal(mesh: Mesh, job_ids: list[str], timeout_s: float) -> None:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = asyncio.run(tally(mesh, job_ids))
        if not current.stuck and not current.lost:
            return
        time.sleep(1)
