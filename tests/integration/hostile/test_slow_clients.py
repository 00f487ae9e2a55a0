"""Slow clients against the real uvicorn gateway: byte-a-second connections, in
the headers and in the body, must not keep a normal upload from finishing."""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.imaging_factories import png_bytes
from tests.integration.hostile.conftest import served_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUBMIT = {"Authorization": "Bearer tok-submit"}
SLOW_EACH = 25  # per kind: 50 in all, the limit below, so one more is refused
PROTECTED = {
    "limit_concurrency": 50,
    "header_timeout_s": 2.0,
    "body_idle_timeout_s": 2.0,
    "min_body_rate_bps": 1000,
    "body_rate_grace_s": 1.0,
}


def _png() -> bytes:
    return png_bytes(
        (np.arange(64 * 64) * 13 % 65536).astype(np.uint16).reshape(64, 64)
    )


def _slow_header() -> bytes:
    return b"POST /v1/jobs?view=L-CC HTTP/1.1\r\nHost: gateway\r\n" + b"X-Pad: a" * 50


def _slow_body() -> bytes:
    image = _png()
    head = (
        "POST /v1/jobs?view=L-CC HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer tok-submit\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(image)}\r\n\r\n"
    ).encode()
    return head + image


async def _trickle(
    port: int, payload: bytes, *, burst: int, stop: asyncio.Event
) -> str:
    """Send ``burst`` bytes at once, then one a second; say how the server ended it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload[:burst])
        for byte in payload[burst:]:
            if stop.is_set():
                return "still open"
            try:
                answer = await asyncio.wait_for(reader.read(256), 1.0)
            except TimeoutError:
                writer.write(bytes([byte]))
                await writer.drain()
                continue
            return answer.split(b"\r\n")[0].decode() if answer else "closed"
        return "sent all"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()


async def _race(**settings: object) -> tuple[httpx.Response, list[str], float]:
    async with served_gateway(**settings) as served:
        port = urlsplit(served.url).port
        assert port is not None
        stop = asyncio.Event()
        header = _slow_header()
        body = _slow_body()
        # Bodies first: their headers are complete at once, so each request is
        # admitted before the header tricklers fill the remaining slots.
        slow = [
            asyncio.create_task(
                _trickle(port, body, burst=body.index(b"\r\n\r\n") + 4, stop=stop)
            )
            for _ in range(SLOW_EACH)
        ]
        await asyncio.sleep(0.3)
        slow += [
            asyncio.create_task(_trickle(port, header, burst=10, stop=stop))
            for _ in range(SLOW_EACH)
        ]
        await asyncio.sleep(3.5)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
            answer = await http.post(
                "/v1/jobs", params={"view": "L-CC"}, headers=SUBMIT, content=_png()
            )
        took = time.monotonic() - started
        stop.set()
        endings = await asyncio.gather(*slow)
    return answer, endings, took


async def test_slow_clients_do_not_stop_a_normal_upload() -> None:
    answer, endings, took = await _race(**PROTECTED)

    print(
        f"\nslow clients: {len(endings)} at 1 byte/s; normal upload"
        f" {answer.status_code} in {took * 1000:.0f} ms;"
        f" slow endings {sorted(set(endings))}",
        file=sys.__stderr__,
    )
    assert answer.status_code == 202, answer.text
    assert set(endings[:SLOW_EACH]) == {"HTTP/1.1 408 Request Timeout"}
    assert endings[SLOW_EACH:] == ["closed"] * SLOW_EACH
    assert took < 5


async def test_slow_clients_starve_uploads_without_the_timeouts() -> None:
    unprotected = PROTECTED | {
        "header_timeout_s": 60.0,
        "body_idle_timeout_s": 60.0,
        "min_body_rate_bps": 0,
    }

    answer, endings, _took = await _race(**unprotected)

    assert answer.status_code == 503
    assert "still open" in endings
