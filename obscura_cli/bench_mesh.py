"""``obscura bench mesh``: the whole mesh against the bare model, on one machine.

1. Bare: decode, preprocess and forward called directly in this process on the
   same images, with the worker's thread count; jobs per second, sequentially.
2. Mesh: a fresh local mesh (``obscura dev up`` on free ports and its own
   database, topology and bucket); jobs per second at saturation (every job posted
   at once, timed from the first post to the last result), then end-to-end latency
   over REST at concurrency 1, 2 and 4 (closed loop: each client posts, polls to
   the end, posts again).
3. Envelope: seal and unseal throughput over one raw AES-256-GCM call on the same
   buffer.

The mesh shares the machine's cores with the bench client, the stand-ins and
every service, as it would on a single developer machine; on a parent instance the
enclave has vCPUs of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click
import httpx

from obscura_cli.dev import down, up


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def bare_throughput(
    images: list[tuple[bytes, str]], repeat: int, threads: int
) -> float:
    import torch

    from services.enclave_worker.demo_weights import make_demo_weights
    from services.enclave_worker.engine import Engine, ModelSpec
    from services.enclave_worker.models import ARCHITECTURES
    from shared.imaging.decode import decode_image
    from standins.provision import DEMO_ARCHITECTURE

    torch.set_num_threads(threads)
    known = ARCHITECTURES[DEMO_ARCHITECTURE]
    spec = ModelSpec(DEMO_ARCHITECTURE, dict(known.input_spec), known.labels)
    engine = Engine(spec, make_demo_weights(DEMO_ARCHITECTURE))
    data, view = images[0]
    engine.predict(decode_image(data).pixels, view)  # warm-up
    started = time.perf_counter()
    count = 0
    for _ in range(repeat):
        for data, view in images:
            engine.predict(decode_image(data).pixels, view)
            count += 1
    return count / (time.perf_counter() - started)


async def _post(client: httpx.AsyncClient, data: bytes, view: str) -> str:
    answer = await client.post(
        "/v1/jobs", data={"view": view}, files={"file": ("image.png", data)}
    )
    answer.raise_for_status()
    return str(answer.json()["job_id"])


async def _until_done(
    client: httpx.AsyncClient, job_id: str, poll_s: float = 0.05
) -> str:
    while True:
        status = (await client.get(f"/v1/jobs/{job_id}")).json()["status"]
        if status in ("succeeded", "failed"):
            return str(status)
        await asyncio.sleep(poll_s)


async def _all_done(client: httpx.AsyncClient, ids: list[str]) -> list[str]:
    """One list call per poll: polling each job would itself load the cores."""
    pending, outcomes = set(ids), {}
    while pending:
        await asyncio.sleep(0.25)
        page = (await client.get("/v1/jobs", params={"limit": 200})).json()
        for job in page["items"]:
            if job["job_id"] in pending and job["status"] in ("succeeded", "failed"):
                outcomes[job["job_id"]] = job["status"]
                pending.discard(job["job_id"])
    return [outcomes[i] for i in ids]


async def _one(client: httpx.AsyncClient, data: bytes, view: str) -> float:
    started = time.perf_counter()
    job_id = await _post(client, data, view)
    if await _until_done(client, job_id) != "succeeded":
        raise click.ClickException(f"job {job_id} failed during the benchmark")
    return time.perf_counter() - started


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU time of each process so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


async def mesh_figures(
    gateway: str,
    token: str,
    images: list[tuple[bytes, str]],
    jobs: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=gateway, headers=headers, timeout=300, limits=limits
    ) as client:
        await _one(client, *images[0])  # warm-up: first KMS calls, caches
        before = cpu_seconds(pids)
        started = time.perf_counter()
        ids = await asyncio.gather(
            *(_post(client, *images[i % len(images)]) for i in range(jobs))
        )
        outcomes = await _all_done(client, list(ids))
        elapsed = time.perf_counter() - started
        after = cpu_seconds(pids)
        cpu = {n: (after[n] - before.get(n, 0.0)) / jobs for n in after}
        if any(outcome != "succeeded" for outcome in outcomes):
            raise click.ClickException("a job failed during the saturation run")
        latencies: dict[int, list[float]] = {}
        for concurrency in (1, 2, 4):

            async def loop(worker: int, concurrency: int = concurrency) -> list[float]:
                data, view = images[worker % len(images)]
                return [
                    await _one(client, data, view)
                    for _ in range(max(2, 8 // concurrency))
                ]

            runs = await asyncio.gather(*(loop(w) for w in range(concurrency)))
            latencies[concurrency] = [value for run in runs for value in run]
    return {
        "mesh_jobs_per_s": jobs / elapsed,
        "latencies": latencies,
        "cpu_s_per_job": cpu,
    }


class _LocalKeys:
    """Data keys from memory: the envelope's own cost, without KMS round trips."""

    def __init__(self) -> None:
        self._keys: dict[bytes, bytes] = {}

    async def generate_data_key(
        self, key_id: str, context: Any, *, recipient: Any = None
    ) -> Any:
        from shared.keys import DataKey

        key, blob = os.urandom(32), os.urandom(48)
        self._keys[blob] = key
        return DataKey(key_id=key_id, ciphertext_blob=blob, plaintext=key)

    async def decrypt(
        self, blob: bytes, context: Any, *, key_id: Any = None, recipient: Any = None
    ) -> bytes:
        return self._keys[blob]


def envelope_ratio(
    size: int = 64 * 1024 * 1024, rounds: int = 3
) -> tuple[float, float]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shared.envelope import seal_bytes, unseal_bytes

    keys = _LocalKeys()
    data = os.urandom(size)
    context = {"purpose": "bench"}
    raw = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)

    def best(action: Any) -> float:
        timings = []
        for _ in range(rounds):
            started = time.perf_counter()
            action()
            timings.append(time.perf_counter() - started)
        return min(timings)

    raw_seal = best(lambda: raw.encrypt(nonce, data, None))
    sealed_raw = raw.encrypt(nonce, data, None)
    raw_open = best(lambda: raw.decrypt(nonce, sealed_raw, None))

    async def sealing() -> tuple[float, float]:
        sealed = await seal_bytes(data, keys, "bench", context)
        seal_t, open_t = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            await seal_bytes(data, keys, "bench", context)
            seal_t.append(time.perf_counter() - began)
            began = time.perf_counter()
            await unseal_bytes(sealed, keys, context)
            open_t.append(time.perf_counter() - began)
        return min(seal_t), min(open_t)

    ours_seal, ours_open = asyncio.run(sealing())
    return raw_seal / ours_seal, raw_open / ours_open


def run_mesh_bench(
    images: list[tuple[str, bytes, str]], jobs: int, threads: int, slots: int = 2
) -> None:
    from shared.logging import configure_logging

    configure_logging("bench", level="WARNING", json=False)
    pairs = [(data, view) for _, data, view in images]
    click.echo(
        f"images: {', '.join(name for name, _, _ in images)}; threads {threads};"
        f" worker slots {slots}"
    )
    repeat = max(1, jobs // len(pairs))
    bare_before = bare_throughput(pairs, repeat=repeat, threads=threads)
    with tempfile.TemporaryDirectory(prefix="obscura-bench-mesh-") as tmp:
        state = Path(tmp)
        suffix = uuid.uuid4().hex[:8]
        extra = (
            "--database", f"obscura_bench_{suffix}",
            "--topology-prefix", f"bench-{suffix}",
            "--bucket", f"bench-{suffix}",
            "--worker-slots", str(slots),
        )  # fmt: skip
        mesh = up(state, free_ports=True, timeout_s=300, extra_args=extra)
        try:
            token = Path(mesh["token_file"]).read_text().strip()
            state_file = state / "run" / "state.json"
            pids = {
                s["name"]: s["pid"]
                for s in json.loads(state_file.read_text())["services"]
                if s["pid"]
            }
            figures = asyncio.run(
                mesh_figures(mesh["gateway_url"], token, pairs, jobs, pids)
            )
        finally:
            down(state, quiet=True)
            asyncio.run(_cleanup(suffix))
    # Measured before and after the mesh run, so a slow spell on a shared machine
    # weighs on both sides of the ratio alike.
    bare_after = bare_throughput(pairs, repeat=repeat, threads=threads)
    bare = (bare_before + bare_after) / 2
    click.echo(
        f"bare pipeline (decode, preprocess, forward): {bare:.3f} jobs/s"
        f" (before {bare_before:.3f}, after {bare_after:.3f})"
    )
    seal_ratio, unseal_ratio = envelope_ratio()
    direct_latency = 1.0 / bare
    click.echo(
        f"mesh at saturation ({jobs} jobs): {figures['mesh_jobs_per_s']:.3f} jobs/s"
    )
    ratio = figures["mesh_jobs_per_s"] / bare
    click.echo(f"mesh over bare throughput: {ratio:.3f} (goal >= 0.85)")
    shares = ", ".join(
        f"{name} {value:.3f}"
        for name, value in sorted(figures["cpu_s_per_job"].items(), key=lambda x: -x[1])
    )
    click.echo(f"CPU seconds per job at saturation: {shares}")
    for concurrency, values in figures["latencies"].items():
        p50, p95, p99 = (_percentile(values, q) for q in (0.5, 0.95, 0.99))
        click.echo(
            f"latency at concurrency {concurrency}: p50 {p50:.3f} s, p95 {p95:.3f} s,"
            f" p99 {p99:.3f} s; added over direct {p50 - direct_latency:+.3f} s"
        )
    click.echo(
        f"seal / raw AES-GCM: {seal_ratio:.3f}, unseal / raw: {unseal_ratio:.3f}"
        " (goal >= 0.8)"
    )
    single = figures["latencies"][1]
    click.echo(
        json.dumps(
            {
                "mesh_over_bare_throughput": round(ratio, 4),
                "latency_p50_s": round(statistics.median(single), 4),
                "latency_p99_s": round(_percentile(single, 0.99), 4),
                "seal_over_raw_aesgcm": round(min(seal_ratio, unseal_ratio), 4),
                "bare_jobs_per_s": round(bare, 4),
                "mesh_jobs_per_s": round(figures["mesh_jobs_per_s"], 4),
            }
        )
    )


async def _cleanup(suffix: str) -> None:
    import asyncpg

    from shared.broker import Topology, connect, delete

    pg = await asyncpg.connect(
        "postgresql://postgres@127.0.0.1:5432/postgres", timeout=5
    )
    try:
        await pg.execute(
            f'DROP DATABASE IF EXISTS "obscura_bench_{suffix}" WITH (FORCE)'
        )
    finally:
        await pg.close()
    connection = await connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        await delete(await connection.channel(), Topology.prefixed(f"bench-{suffix}"))
    finally:
        await connection.close()
