"""The whole mesh under kills, broker-side drops, poison and replayed messages."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from typing import Any

import aio_pika
import pytest

from tests.integration.faults.broker_side import close_connections
from tests.integration.faults_mesh.helpers import (
    ALL,
    client,
    kill,
    queue_depths,
    rows,
    submit_png,
    submit_until_accepted,
    tally,
    wait_restarted,
    wait_terminal,
)
from tests.integration.mesh.conftest import Mesh, sample

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TENANT = "st-faults"
THUMBS = ("thumb_0_L_CC.png", "thumb_0_L_MLO.png")


# Every service can die; the client retries its submissions under idempotency
# keys, so a gateway or encryptor killed mid-upload costs a retry, not a job.
VICTIMS = ("enclave-proxy", "enclave-worker", "results", "encryptor", "gateway")


def _soak(mesh: Mesh, jobs: int, kills: int, cuts: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    images = [sample(name).read_bytes() for name in THUMBS]
    views = ("L-CC", "L-MLO")
    faults = [f"kill:{rng.choice(VICTIMS)}" for _ in range(kills)] + ["cut"] * cuts
    rng.shuffle(faults)
    every = max(1, jobs // (len(faults) + 1))
    accepted: list[str] = []
    run = uuid.uuid4().hex[:8]
    with client(mesh, mesh.token(TENANT, *ALL)) as http:
        for index in range(jobs):
            key = f"soak-{run}-{index}"
            accepted.append(
                submit_until_accepted(http, images[index % 2], views[index % 2], key)
            )
            if faults and index % every == every - 1:
                _fault(mesh, faults.pop(0))
    wait_terminal(mesh, accepted, timeout_s=60 + jobs * 3)
    counts = asyncio.run(tally(mesh, accepted))
    # Copies redelivered after a kill may still run once their job is done.
    depths = _settled_queues(mesh, timeout_s=60)
    print(f"soak jobs={jobs}: {counts.line()} queues={depths}", file=sys.__stderr__)

    assert counts.accepted == jobs
    assert counts.lost == [] and counts.stuck == [] and counts.duplicated == []
    assert counts.succeeded + sum(counts.failed.values()) == jobs
    assert "no_reason" not in counts.failed
    assert set(depths.values()) == {0}, depths


def _fault(mesh: Mesh, kind: str) -> None:
    if kind.startswith("kill:"):
        victim = kind.removeprefix("kill:")
        old = kill(mesh, victim)
        print(f"soak: killed {victim}", file=sys.__stderr__)
        wait_restarted(mesh, victim, old)
    else:
        # Right after a kill the restarted service may not have reconnected yet:
        # whatever is connected is cut.
        assert close_connections(mesh.prefix) >= 1


def test_faults_mesh_short_soak_with_one_kill_and_one_cut(mesh: Mesh) -> None:
    _soak(mesh, jobs=20, kills=1, cuts=1)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("OBSCURA_SOAK"), reason="OBSCURA_SOAK unset")
def test_faults_mesh_soak_200_jobs_with_random_kills_and_cuts(mesh: Mesh) -> None:
    _soak(mesh, jobs=200, kills=5, cuts=5)


async def _tapped_job(mesh: Mesh, token: str) -> dict[str, Any]:
    """A job message exactly as the encryptor published it, for a real job."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        await tap.bind(f"{mesh.prefix}.jobs", routing_key="job")
        with client(mesh, token) as http:
            job_id = await asyncio.to_thread(
                submit_png, http, sample(THUMBS[0]).read_bytes()
            )
        assert job_id is not None
        message = await tap.get(timeout=30)
        await message.ack()
        body: dict[str, Any] = json.loads(message.body)
        assert body["job_id"] == job_id
        return body
    finally:
        await connection.close()


async def _publish(mesh: Mesh, body: bytes) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{mesh.prefix}.jobs")
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key="job")
    finally:
        await connection.close()


async def _outcome(mesh: Mesh, job_id: str, timeout_s: float = 60) -> tuple[str, ...]:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await rows(
                mesh,
                "SELECT tenant, status, failure_reason FROM jobs WHERE id = $1::uuid",
                job_id,
            )
            if found and found[0]["status"] in ("succeeded", "failed"):
                row = found[0]
                return (row["tenant"], row["status"], row["failure_reason"])
            await asyncio.sleep(0.3)


def _retries(mesh: Mesh, job_id: str) -> int:
    log = (mesh.run_dir / "enclave-proxy.log").read_text(errors="replace")
    return sum(
        1 for line in log.splitlines() if job_id in line and "job_requeued" in line
    )


def test_faults_mesh_poison_and_replayed_jobs_fail_at_once(mesh: Mesh) -> None:
    token = mesh.token(TENANT, *ALL)
    cases_ids: dict[str, str] = {}

    async def scenario() -> dict[str, tuple[str, ...]]:
        original = await _tapped_job(mesh, token)
        done = await _outcome(mesh, original["job_id"])
        assert done[1] == "succeeded", done
        cases: dict[str, dict[str, Any] | bytes] = {
            "missing_object": original
            | {"job_id": str(uuid.uuid4()), "object_key": "nowhere/absent.sealed"},
            # The sealed object of one job under another job's id: the envelope
            # and the image key are bound to the first job.
            "moved_object": original | {"job_id": str(uuid.uuid4())},
            # The same message, claiming another tenant.
            "other_tenant": original
            | {"job_id": str(uuid.uuid4()), "tenant": "other-clinic"},
            "unknown_version": original | {"job_id": str(uuid.uuid4()), "version": 2},
        }
        for body in cases.values():
            await _publish(mesh, json.dumps(body).encode())
        # Not JSON at all: only the dead-letter queue and a log line can tell.
        await _publish(mesh, b"\x00not-json")
        # A same-id replay under another tenant must not touch the real job.
        await _publish(mesh, json.dumps(original | {"tenant": "other-clinic"}).encode())
        outcomes = {}
        for name, body in cases.items():
            assert isinstance(body, dict)
            outcomes[name] = await _outcome(mesh, body["job_id"])
        outcomes["original_after_replay"] = await _outcome(mesh, original["job_id"])
        for name, body in cases.items():
            assert isinstance(body, dict)
            cases_ids[name] = body["job_id"]
        return outcomes

    outcomes = asyncio.run(scenario())
    print(f"poison outcomes: {outcomes}", file=sys.__stderr__)
    print(f"poison queues: {queue_depths(mesh)}", file=sys.__stderr__)

    for name in ("missing_object", "moved_object", "other_tenant", "unknown_version"):
        assert outcomes[name][1] == "failed", (name, outcomes[name])
        assert outcomes[name][2], (name, outcomes[name])
    assert outcomes["unknown_version"][2] == "invalid_message"
    assert outcomes["other_tenant"][0] == "other-clinic"
    assert outcomes["original_after_replay"][:2] == (TENANT, "succeeded")
    depths = _settled_queues(mesh)
    assert set(depths.values()) == {0}, depths
    for name in ("missing_object", "moved_object", "other_tenant"):
        body = cases_ids[name]
        assert _retries(mesh, body) == 0, name


def _settled_queues(mesh: Mesh, timeout_s: float = 20) -> dict[str, int]:
    """Queue depths once they are all empty, or as they stand at the deadline."""
    deadline = time.monotonic() + timeout_s
    depths = queue_depths(mesh)
    while set(depths.values()) != {0} and time.monotonic() < deadline:
        time.sleep(0.5)
        depths = queue_depths(mesh)
    return depths
