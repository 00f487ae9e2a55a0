"""The event-loop blocking checks: the env switch, the watch and the log scan."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from shared.logging import LOOP_DEBUG_ENV, enable_loop_debug_from_env
from tests.loopdebug import (
    SlowCallbackWatch,
    debug_environment,
    slow_callbacks,
    slow_callbacks_in_logs,
    watching,
)

pytestmark = pytest.mark.timeout(10)


async def test_loop_watch_catches_a_callback_that_blocks_the_loop() -> None:
    loop = asyncio.get_running_loop()
    with watching(loop, threshold_s=0.05) as watch:
        loop.call_soon(time.sleep, 0.08)
        await asyncio.sleep(0.15)
    assert len(watch.lines) == 1
    assert "took 0.0" in watch.lines[0] and "sleep" in watch.lines[0]
    assert not loop.get_debug()


async def test_loop_watch_ignores_callbacks_under_the_threshold() -> None:
    loop = asyncio.get_running_loop()
    with watching(loop, threshold_s=0.5) as watch:
        loop.call_soon(time.sleep, 0.02)
        await asyncio.sleep(0.05)
    assert watch.lines == []


async def test_enable_loop_debug_from_env_sets_debug_and_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setenv(LOOP_DEBUG_ENV, "0.05")
    watch = SlowCallbackWatch()
    logging.getLogger("asyncio").addHandler(watch)
    try:
        assert enable_loop_debug_from_env() == 0.05
        loop.call_soon(time.sleep, 0.08)
        await asyncio.sleep(0.15)
    finally:
        logging.getLogger("asyncio").removeHandler(watch)
        loop.set_debug(False)
    assert loop.slow_callback_duration == 0.05
    assert len(watch.lines) == 1


async def test_enable_loop_debug_from_env_unset_leaves_the_loop_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LOOP_DEBUG_ENV, raising=False)
    assert enable_loop_debug_from_env() is None
    assert not asyncio.get_running_loop().get_debug()


async def test_enable_loop_debug_from_env_refuses_a_non_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LOOP_DEBUG_ENV, "fast")
    with pytest.raises(ValueError, match="'fast' is not a number of seconds"):
        enable_loop_debug_from_env()


def test_slow_callbacks_in_logs_finds_asyncio_lines_per_service(
    tmp_path: Path,
) -> None:
    slow = (
        "Executing <Task pending name='Task-3' coro=<run() running at x.py:1>>"
        " took 0.239 seconds"
    )
    (tmp_path / "gateway.log").write_text(f'{{"event": "ok"}}\n{slow}\n')
    (tmp_path / "encryptor.log").write_text('{"event": "took 3 seconds"}\n')
    found = slow_callbacks_in_logs(tmp_path, ("gateway", "encryptor", "results"))
    assert found == {"gateway": [slow], "encryptor": [], "results": []}
    assert slow_callbacks(slow * 2) == [(slow * 2)[:300]]


def test_debug_environment_is_set_only_inside_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LOOP_DEBUG_ENV, raising=False)
    with debug_environment(0.2):
        assert os.environ[LOOP_DEBUG_ENV] == "0.2"
    assert LOOP_DEBUG_ENV not in os.environ
