"""``obscura bench worker``: where the time of one job goes inside the enclave.

Starts moto and the attested KMS gate in this process, provisions keys and the
sealed demo bundle, runs the worker on loopback TCP with the simulated NSM, and
sends it each image ``repeat`` times through the same link code the proxy uses.
The worker reports each stage's time; the figure of merit is everything but the
forward pass over the forward pass.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

STAGES = (
    "receive",
    "unwrap",
    "unseal",
    "decode",
    "preprocess",
    "forward",
    "seal",
    "receipt",
)


async def _pieces(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _run_jobs(
    client: Any,
    sealer: Any,
    hospital_key: str,
    images: list[tuple[str, bytes, str]],
    repeat: int,
) -> list[dict[str, Any]]:
    """Seal each image as the encryptor would, then time it through the worker."""
    from shared.enclave_protocol import JobRequest
    from shared.envelope import seal_bytes

    rows: list[dict[str, Any]] = []
    for name, data, view in images:
        for _ in range(repeat):
            job_id = str(uuid.uuid4())
            context = {"purpose": "image", "tenant": "bench", "job_id": job_id}
            sealed = bytes(await seal_bytes(data, sealer, hospital_key, context))
            request = JobRequest(
                job_id, "bench", secrets.token_bytes(16), len(sealed), "nyu-demo", view
            )
            began = time.perf_counter()
            outcome = await client.run_job(request, _pieces(sealed), timeout_s=300)
            total = time.perf_counter() - began
            timings = json.loads(outcome.attributes["timings"])
            rows.append({"image": name, "job_s": total, **timings})
    return rows


async def _bench(images: list[tuple[str, bytes, str]], repeat: int) -> dict[str, Any]:
    from shared.enclave_protocol import HandedCredentials
    from standins.devstate import KmsStack
    from standins.inprocess import running_worker
    from standins.provision import keys_as, provision

    with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
        folder = Path(tmp)
        with KmsStack(folder, processes=True) as stack:
            keys = await provision(stack.kms_url, stack.principals, folder)
            async with running_worker(
                stack.kms_url, keys.bundle, keys.hospital_key, stack.pki, keys.pcrs
            ) as running:
                worker, client = running.worker, running.client
                enclave = stack.principals["enclave"]
                started = time.perf_counter()
                await client.hand_credentials(
                    HandedCredentials(enclave.access_key_id, enclave.secret_access_key)
                )
                while not (status := await client.status()).ready:
                    if status.reason == "model_unavailable":
                        raise click.ClickException(
                            f"worker not ready: {status.message}"
                        )
                    await asyncio.sleep(0.02)
                ready_s = time.perf_counter() - started
                assert worker.model is not None
                async with keys_as(
                    stack.kms_url, stack.principals["encryptor"]
                ) as sealer:
                    rows = await _run_jobs(
                        client, sealer, keys.hospital_key, images, repeat
                    )
    return {
        "rows": rows,
        "ready_s": ready_s,
        "unlock_s": worker.model.unlock_s,
        "load_s": worker.model.load_s,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(row.get(key, 0.0)) for row in rows)


def run_worker_bench(images: list[tuple[str, bytes, str]], repeat: int) -> None:
    from shared.logging import configure_logging

    configure_logging("bench", level="WARNING", json=False)
    report = asyncio.run(_bench(images, repeat))
    rows = report["rows"]
    click.echo(f"{'image':<22}" + "".join(f"{s:>11}" for s in (*STAGES, "job")))
    for name in dict.fromkeys(row["image"] for row in rows):
        mine = [row for row in rows if row["image"] == name]
        cells = "".join(f"{_median(mine, s):>11.4f}" for s in STAGES)
        click.echo(f"{name:<22}{cells}{_median(mine, 'job_s'):>11.4f}")
    forward = _median(rows, "forward")
    around = sum(_median(rows, s) for s in STAGES if s != "forward")
    figures = {
        "overhead_over_forward": round(around / forward, 4),
        "forward_s": round(forward, 4),
        "around_forward_s": round(around, 4),
        "unlock_s": round(report["unlock_s"], 4),
        "load_s": round(report["load_s"], 4),
        "ready_after_credentials_s": round(report["ready_s"], 4),
        "job_s_p50": round(_median(rows, "job_s"), 4),
        **{f"{stage}_s": round(_median(rows, stage), 4) for stage in STAGES},
    }
    click.echo(
        f"overhead/forward = {figures['overhead_over_forward']} (goal <= 0.35);"
        f" unlock+load = {figures['unlock_s'] + figures['load_s']:.3f} s (goal <= 2 s)"
    )
    click.echo(json.dumps(figures))
