"""Memory and event-loop behaviour of the mesh's processes under load.

Runs in this order on one mesh whose services are in asyncio debug mode:
many inferences (the worker's RSS grows by less than 32 MiB after warm-up),
five concurrent large DICOM uploads (gateway and encryptor grow by less than
64 MiB each, and every sealed object opens to the uploaded bytes), then a scan
of every service log for callbacks that held an event loop longer than 0.1 s.
``OBSCURA_SOAK=1`` adds the full sizes: 300 inferences up to CC size, and five
concurrent uploads of 200 MB.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.imaging_factories import dicom_bytes, mammogram, png_bytes
from tests.integration.mesh.conftest import Mesh
from tests.integration.resources.conftest import (
    MIB,
    RssSampler,
    service_pid,
    status_kib,
    unsealed_sha256,
)
from tests.loopdebug import (
    SERVICES,
    SLOW_CALLBACK_S,
    LoopCpuSampler,
    process_has_loop_debug,
    stamped_slow_callbacks,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SOAK = bool(os.environ.get("OBSCURA_SOAK"))

TENANT = "st-marys"
SCOPES = ("jobs:submit", "jobs:read")
UPLOADS = 5
UPLOAD_GROWTH_BOUND_MIB = 64
WORKER_GROWTH_BOUND_MIB = 32
# Thumbnail to mid-size images by default; soak runs add CC and MLO sizes.
SMALL_SIDES = ((256, 200), (640, 480), (900, 700), (420, 1000), (1100, 800))
CC_SIDES = ((2677, 1942), (2974, 1748), (1200, 900), *SMALL_SIDES)


def report(text: str) -> None:
    print(text, file=sys.__stderr__)


def http(mesh: Mesh, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=mesh.gateway,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(300, connect=10),
    )


async def wait_done(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in 180 s")


def varied_image(index: int, sides: tuple[tuple[int, int], ...]) -> bytes:
    """A 16-bit PNG of random content, its size cycling through ``sides``."""
    height, width = sides[index % len(sides)]
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 4096, size=(height, width), dtype=np.uint16)
    return png_bytes(pixels)


async def infer(
    client: httpx.AsyncClient, index: int, sides: tuple[tuple[int, int], ...]
) -> dict[str, Any]:
    view = ("L-CC", "R-CC", "L-MLO", "R-MLO")[index % 4]
    files = {"file": ("image.png", varied_image(index, sides), "image/png")}
    answer = await client.post("/v1/jobs", data={"view": view}, files=files)
    assert answer.status_code == 202, answer.text
    return await wait_done(client, answer.json()["job_id"])


async def infer_all(
    mesh: Mesh, token: str, indices: range, sides: tuple[tuple[int, int], ...]
) -> None:
    async with http(mesh, token) as client:
        for start in range(indices.start, indices.stop, 2):
            batch = range(start, min(start + 2, indices.stop))
            done = await asyncio.gather(*(infer(client, i, sides) for i in batch))
            for job in done:
                assert job["status"] == "succeeded", job


def check_worker_memory(
    mesh: Mesh, inferences: int, warm_up: int, sides: tuple[tuple[int, int], ...]
) -> None:
    pid = service_pid(mesh, "enclave-worker")
    token = mesh.token(TENANT, *SCOPES)
    asyncio.run(infer_all(mesh, token, range(warm_up), sides))
    warm = status_kib(pid, "VmRSS")
    started = time.monotonic()
    asyncio.run(infer_all(mesh, token, range(warm_up, inferences), sides))
    end = status_kib(pid, "VmRSS")
    growth = (end - warm) / 1024
    report(
        f"\n[resources] worker RSS over {inferences} inferences: after warm-up"
        f" ({warm_up}) {warm / 1024:.1f} MiB, at end {end / 1024:.1f} MiB, growth"
        f" {growth:+.1f} MiB (bound {WORKER_GROWTH_BOUND_MIB} MiB),"
        f" {time.monotonic() - started:.0f} s"
    )
    assert service_pid(mesh, "enclave-worker") == pid, "the worker restarted"
    assert growth < WORKER_GROWTH_BOUND_MIB


def test_worker_memory_stays_flat_over_30_small_inferences(mesh: Mesh) -> None:
    check_worker_memory(mesh, 30, 6, SMALL_SIDES)


@pytest.mark.soak
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SOAK, reason="soak run; set OBSCURA_SOAK=1")
def test_worker_memory_stays_flat_over_300_inferences_soak(mesh: Mesh) -> None:
    check_worker_memory(mesh, 300, 10, CC_SIDES)


def write_dicom(path: Path, side: int, padding: int = 0) -> str:
    """An uncompressed side x side uint16 MG file on disk; returns its SHA-256.

    ``padding`` bytes of Data Set Trailing Padding follow the pixel data: the
    mesh refuses images over 40 MP, so a 200 MB file needs more than pixels.
    """
    pixels = (np.arange(side * side, dtype=np.uint32) * 2654435761 >> 20).astype(
        np.uint16
    )
    dataset = mammogram(pixels.reshape(side, side))
    del pixels
    if padding:
        dataset.add_new(0xFFFCFFFC, "OB", bytes(range(256)) * (padding // 256))
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    del dataset
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


async def upload(client: httpx.AsyncClient, path: Path) -> str:
    with path.open("rb") as handle:
        files = {"file": ("big.dcm", handle, "application/dicom")}
        answer = await client.post("/v1/jobs", files=files)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


async def upload_all(mesh: Mesh, token: str, path: Path, count: int) -> list[str]:
    async with http(mesh, token) as client:
        uploads = (upload(client, path) for _ in range(count))
        return list(await asyncio.gather(*uploads))


def check_uploads(mesh: Mesh, tmp_path: Path, side: int, padding: int = 0) -> None:
    small_dicom = tmp_path / "small.dcm"
    small_dicom.write_bytes(dicom_bytes(mammogram(np.ones((512, 400), np.uint16))))
    path = tmp_path / "big.dcm"
    expected = write_dicom(path, side, padding)
    size = path.stat().st_size
    pids = {name: service_pid(mesh, name) for name in ("gateway", "encryptor")}
    sampler = RssSampler(pids)
    token = mesh.token(TENANT, *SCOPES)
    # Warm-up: the first upload loads code and opens pools that then stay.
    asyncio.run(upload_all(mesh, token, small_dicom, 1))
    started = time.monotonic()
    with sampler.running():
        job_ids = asyncio.run(upload_all(mesh, token, path, UPLOADS))
    elapsed = time.monotonic() - started
    report(
        f"\n[resources] {UPLOADS} concurrent uploads of {size / MIB:.0f} MiB in"
        f" {elapsed:.1f} s (VmHWM reset: {sampler.hwm_reset})"
    )
    for name in pids:
        report(
            f"[resources] {name}: baseline {sampler.baseline[name] / 1024:.1f} MiB,"
            f" peak {sampler.peak[name] / 1024:.1f} MiB, growth"
            f" {sampler.growth_mib(name):+.1f} MiB (bound {UPLOAD_GROWTH_BOUND_MIB})"
        )
    for job_id in job_ids:
        digest, opened = asyncio.run(unsealed_sha256(mesh, TENANT, job_id))
        assert (digest, opened) == (expected, size), job_id
    for name in pids:
        assert sampler.growth_mib(name) < UPLOAD_GROWTH_BOUND_MIB, name


def test_five_concurrent_40_mb_uploads_keep_memory_bounded_and_round_trip(
    mesh: Mesh, tmp_path: Path
) -> None:
    check_uploads(mesh, tmp_path, 4_480)  # uint16 pixels: ~38 MiB per file


@pytest.mark.soak
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SOAK, reason="soak run; set OBSCURA_SOAK=1")
def test_five_concurrent_200_mb_uploads_keep_memory_bounded_and_round_trip_soak(
    mesh: Mesh, tmp_path: Path
) -> None:
    # 6000 x 6000 uint16 pixels (36 MP, ~69 MiB) and ~122 MiB of padding.
    check_uploads(mesh, tmp_path, 6_000, 128 * 1000 * 1000)


def test_no_service_blocked_its_event_loop(
    mesh: Mesh, loop_cpu: LoopCpuSampler
) -> None:
    for name in SERVICES:
        assert process_has_loop_debug(service_pid(mesh, name)), name
        assert loop_cpu.samples[name], f"no CPU samples of {name}"
    found = stamped_slow_callbacks(mesh.run_dir, loop_cpu)
    for name in SERVICES:
        mine = [c for c in found if c.service == name]
        report(f"[resources] {name}: {len(mine)} callbacks over {SLOW_CALLBACK_S} s")
        for slow in mine:
            cpu = "?" if slow.loop_cpu_s is None else f"{slow.loop_cpu_s:.2f}"
            verdict = "BLOCKED" if slow.blocked() else "waited for a core or the GIL"
            report(
                f"    took {slow.took_s:.3f} s wall, loop thread CPU {cpu} s: {verdict}"
            )
    assert [c.line for c in found if c.blocked()] == []
