"""The event-loop blocking checks: the env switch, the watch and the log scan."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.logging import LOOP_DEBUG_ENV, enable_loop_debug_from_env
from tests.loopdebug import (
    STAMPED_LINE,
    LoopCpuSampler,
    SlowCallback,
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


@pytest.fixture
def asyncio_logger() -> Iterator[logging.Logger]:
    """The ``asyncio`` logger, put back as it was after the test."""
    logger = logging.getLogger("asyncio")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield logger
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


async def test_enable_loop_debug_from_env_logs_stamped_slow_callbacks(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    asyncio_logger: logging.Logger,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setenv(LOOP_DEBUG_ENV, "0.05")
    try:
        assert enable_loop_debug_from_env() == 0.05
        assert enable_loop_debug_from_env() == 0.05  # a second call adds nothing
        loop.call_soon(time.sleep, 0.08)
        await asyncio.sleep(0.15)
    finally:
        loop.set_debug(False)
    lines = capsys.readouterr().err.splitlines()
    assert loop.slow_callback_duration == 0.05
    assert len(lines) == 1
    match = STAMPED_LINE.match(lines[0])
    assert match is not None, lines
    assert abs(float(match["end"]) - time.time()) < 5
    assert 0.08 <= float(match["took"]) < 1


def test_slow_callback_is_blocked_only_when_its_loop_thread_computed() -> None:
    sampler = LoopCpuSampler({"gateway": 1})
    # CPU seconds of the thread at each sample time: busy from 10.0 to 10.2.
    sampler.samples["gateway"] = [(9.9, 1.0), (10.0, 1.0), (10.2, 1.2), (10.4, 1.2)]
    assert sampler.cpu_between("gateway", 10.0, 10.2) == pytest.approx(0.2)
    assert sampler.cpu_between("gateway", 10.25, 10.35) == pytest.approx(0.0)
    assert sampler.cpu_between("gateway", 8.0, 9.0) is None
    busy = SlowCallback("gateway", 10.2, 0.2, 0.2, "")
    waiting = SlowCallback("gateway", 10.35, 0.2, 0.01, "")
    unknown = SlowCallback("gateway", 9.0, 0.2, None, "")
    assert busy.blocked() and not unknown.blocked() and not waiting.blocked()


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
