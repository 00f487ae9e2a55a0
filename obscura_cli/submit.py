"""``obscura submit``: post images to the gateway, optionally wait and verify.

With ``--wait`` each job is polled to its end, its prediction read decrypted (the
token needs ``results:decrypt``) and its receipt verified against the approved
PCR0 and the pinned root: the local mesh's by default, or ``--pcr0``/``--root``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from shared.attestation import load_root
from shared.errors import ObscuraError
from shared.receipt import Receipt, verify_receipt

TERMINAL = frozenset({"succeeded", "failed"})


@dataclass
class Submitted:
    path: Path
    view: str | None
    job_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    status: str = "pending"
    error: str | None = None
    prediction: dict[str, float] | None = None
    verified: str = "-"
    latency_s: float | None = None


async def _post(client: httpx.AsyncClient, item: Submitted, priority: str) -> None:
    fields = {"priority": priority}
    if item.view:
        fields["view"] = item.view
    with item.path.open("rb") as handle:
        answer = await client.post(
            "/v1/jobs", data=fields, files={"file": (item.path.name, handle)}
        )
    body = answer.json()
    if answer.status_code not in (200, 202):
        item.status, item.error = "refused", f"{answer.status_code} {body.get('error')}"
        return
    item.job_id, item.status = body["job_id"], body["status"]


async def _wait(
    client: httpx.AsyncClient,
    item: Submitted,
    *,
    timeout_s: float,
    pcr0: bytes | None,
    root_pem: Path | None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while item.job_id and time.monotonic() < deadline:
        job = (await client.get(f"/v1/jobs/{item.job_id}")).json()
        item.status = job["status"]
        if item.status in TERMINAL:
            break
        await asyncio.sleep(0.25)
    item.latency_s = time.monotonic() - item.started
    if item.status != "succeeded":
        if item.status == "failed":
            failure = job.get("failure") or {}
            item.error = f"{failure.get('reason')}: {failure.get('message')}"
        return
    answer = await client.get(
        f"/v1/jobs/{item.job_id}/result", params={"decrypt": "true"}
    )
    result = answer.json()
    item.prediction = result.get("prediction")
    if pcr0 is None:
        item.verified = "no pcr0"
        return
    try:
        verify_receipt(
            Receipt.from_json(result["receipt"]),
            root=load_root(root_pem),
            pcr0=pcr0,
            sealed_result_sha256=result.get("sealed_result_sha256"),
        )
        item.verified = "yes"
    except ObscuraError as exc:
        item.verified = f"NO ({exc.reason.value})"


async def submit_all(
    files: list[Path],
    *,
    gateway: str,
    token: str,
    view: str | None,
    views: dict[Path, str],
    priority: str,
    wait: bool,
    timeout_s: float,
    pcr0: bytes | None,
    root_pem: Path | None,
) -> list[Submitted]:
    items = [Submitted(path, view or views.get(path)) for path in files]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=gateway, headers=headers, timeout=120
    ) as client:
        with click.progressbar(items, label="submitting", file=sys.stderr) as bar:
            for item in bar:
                item.started = time.monotonic()
                await _post(client, item, priority)
        if wait:
            await asyncio.gather(
                *(
                    _wait(
                        client, item, timeout_s=timeout_s, pcr0=pcr0, root_pem=root_pem
                    )
                    for item in items
                    if item.job_id
                )
            )
    return items


def print_table(items: list[Submitted]) -> None:
    click.echo(
        f"{'file':<24}{'view':<7}{'benign':>9}{'malignant':>11}  {'receipt':<10}"
        f"{'latency':>9}  status"
    )
    for item in items:
        scores: dict[str, Any] = item.prediction or {}
        benign = f"{scores['benign']:.4f}" if "benign" in scores else "-"
        malignant = f"{scores['malignant']:.4f}" if "malignant" in scores else "-"
        latency = f"{item.latency_s:.2f} s" if item.latency_s is not None else "-"
        status = item.status if not item.error else f"{item.status} ({item.error})"
        click.echo(
            f"{item.path.name[:23]:<24}{item.view or '-':<7}{benign:>9}{malignant:>11}"
            f"  {item.verified:<10}{latency:>9}  {status}"
        )
