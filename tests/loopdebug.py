"""Event-loop blocking checks: asyncio debug mode with a slow-callback threshold.

Two ways in. For a mesh, ``debug_environment()`` puts
``OBSCURA_LOOP_SLOW_CALLBACK_S`` in the environment the services inherit; each
entry point calls ``shared.logging.enable_loop_debug_from_env``, which turns on
debug mode for that service's loop, and ``stamped_slow_callbacks`` finds the
lines asyncio wrote to their log files. asyncio measures wall time, so each line
is paired with the CPU time the service's loop thread used in that window
(``LoopCpuSampler``): a callback is a block when the loop itself computed for
the threshold, not when the process waited for a core on a busy 2-core machine.
For in-process tests, the ``loop_watch`` fixture puts the test's own loop in
debug mode and fails the test if any callback held it longer than the threshold.

Not ``PYTHONASYNCIODEBUG=1``: aiohttp reads it too and then parses responses
strictly, refusing the duplicate ``Server`` header moto's S3 server sends, so
no aiobotocore call to the stand-in would succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.logging import LOOP_DEBUG_ENV

SLOW_CALLBACK_S = 0.1
SERVICES = ("gateway", "encryptor", "results", "enclave-proxy", "enclave-worker")

# asyncio's own wording, in base_events.BaseEventLoop._run_once.
SLOW_LINE = re.compile(r"Executing (?P<what>.+?) took (?P<seconds>\d+\.\d+) seconds")


def service_environment(threshold_s: float = SLOW_CALLBACK_S) -> dict[str, str]:
    return {LOOP_DEBUG_ENV: str(threshold_s)}


@contextlib.contextmanager
def debug_environment(threshold_s: float = SLOW_CALLBACK_S) -> Iterator[None]:
    """Set the variables only while processes are spawned, then restore them.

    Only the processes spawned inside the block need them; left set, they would
    leak into every later mesh this test session starts.
    """
    wanted = service_environment(threshold_s)
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# What ``enable_loop_debug_from_env`` writes: Unix time at the callback's end.
STAMPED_LINE = re.compile(
    r"^(?P<end>\d+\.\d+) asyncio Executing .+? took (?P<took>\d+\.\d+) seconds"
)


@dataclass(frozen=True)
class SlowCallback:
    service: str
    end: float
    took_s: float
    loop_cpu_s: float | None
    line: str = field(repr=False)

    def blocked(self, threshold_s: float = SLOW_CALLBACK_S) -> bool:
        """True when the loop's own thread computed for the threshold or longer.

        asyncio measures wall time; on a loaded machine a callback can take long
        because the process was not scheduled. With the thread's CPU time over
        the same window this tells the loop's own work from waiting for a core.
        When the sampler itself was starved of CPU over the window, the thread's
        CPU time is unknown; such a callback is reported but not counted, since a
        machine too loaded to sample cannot tell either way.
        """
        if self.loop_cpu_s is None:
            return False
        return self.loop_cpu_s >= threshold_s


CPU_SAMPLE_S = 0.01
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _main_thread_cpu_s(pid: int) -> float:
    # Fields after the command name: state is 3rd, utime 14th, stime 15th.
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


class LoopCpuSampler:
    """Samples the CPU time of each service's main (event-loop) thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: dict[str, list[tuple[float, float]]] = {n: [] for n in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LoopCpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    self.samples[name].append((time.time(), _main_thread_cpu_s(pid)))

    def cpu_between(self, name: str, start: float, end: float) -> float | None:
        """Estimated CPU seconds the thread used in [start, end], or None.

        The samples bracketing the window span a little more than it; the CPU
        used over that span is scaled down to the window's length.
        """
        samples = self.samples.get(name, [])
        before = [(at, cpu) for at, cpu in samples if at <= start]
        after = [(at, cpu) for at, cpu in samples if at >= end]
        if not before or not after:
            return None
        (t0, cpu0), (t1, cpu1) = before[-1], after[0]
        return (cpu1 - cpu0) * (end - start) / max(t1 - t0, end - start)


def stamped_slow_callbacks(
    run_dir: Path, sampler: LoopCpuSampler, names: tuple[str, ...] = SERVICES
) -> list[SlowCallback]:
    """Every slow callback the services logged, with their loop thread's CPU."""
    found = []
    for name in names:
        path = run_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            match = STAMPED_LINE.match(line)
            if match:
                end, took = float(match["end"]), float(match["took"])
                cpu = sampler.cpu_between(name, end - took, end)
                found.append(SlowCallback(name, end, took, cpu, line[:300]))
    return found


def slow_callbacks(text: str) -> list[str]:
    """The slow-callback lines in one log's text, at most 300 characters each."""
    return [line[:300] for line in text.splitlines() if SLOW_LINE.search(line)]


def slow_callbacks_in_logs(
    run_dir: Path, names: tuple[str, ...] = SERVICES
) -> dict[str, list[str]]:
    """Slow-callback lines per service log in a mesh's run folder."""
    found: dict[str, list[str]] = {}
    for name in names:
        path = run_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        found[name] = slow_callbacks(text)
    return found


def process_has_loop_debug(pid: int) -> bool:
    """True when the process was started with the loop-debug variables."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return all(
        f"{name}={value}".encode() in environ
        for name, value in service_environment().items()
    )


class SlowCallbackWatch(logging.Handler):
    """Collects asyncio's slow-callback records from the ``asyncio`` logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if SLOW_LINE.search(message):
            self.lines.append(message[:300])


@contextlib.contextmanager
def watching(
    loop: asyncio.AbstractEventLoop, threshold_s: float = SLOW_CALLBACK_S
) -> Iterator[SlowCallbackWatch]:
    """Debug mode and the threshold on ``loop`` for the block, then restored."""
    logger = logging.getLogger("asyncio")
    watch = SlowCallbackWatch()
    saved = (loop.get_debug(), loop.slow_callback_duration, logger.level)
    loop.set_debug(True)
    loop.slow_callback_duration = threshold_s
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        loop.set_debug(saved[0])
        loop.slow_callback_duration = saved[1]
        logger.setLevel(saved[2])


@pytest.fixture
async def loop_watch() -> AsyncIterator[SlowCallbackWatch]:
    """Fail the test if any callback on its loop ran longer than 0.1 s."""
    with watching(asyncio.get_running_loop()) as watch:
        yield watch
    if watch.lines:
        pytest.fail(
            f"{len(watch.lines)} callbacks blocked the event loop for more than"
            f" {SLOW_CALLBACK_S} s: {watch.lines[:3]}",
            pytrace=False,
        )
