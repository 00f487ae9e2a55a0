"""A small process supervisor for the local mesh (``obscura dev up``).

Each service is a separate process with its log in the run folder. A service that
dies is restarted with exponential backoff; one that keeps dying within a short
window is marked ``failed`` and left down, so a broken build does not spin. The
supervisor writes its view of the world to ``state.json`` after every change;
``obscura dev status`` reads that file, ``obscura dev down`` signals the
supervisor, which stops exactly the processes it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str | None = None
    stop_timeout_s: float = 10.0


@dataclass
class ServiceState:
    name: str
    pid: int | None = None
    state: str = "starting"  # starting | running | restarting | failed | stopped
    ready: bool = False
    restarts: int = 0
    log_file: str = ""
    last_exit: int | None = None
    started_at: float = 0.0


@dataclass
class _Running:
    spec: ServiceSpec
    status: ServiceState
    process: asyncio.subprocess.Process | None = None
    recent_deaths: list[float] = field(default_factory=list)


async def http_ready(url: str, timeout_s: float = 2.0) -> bool:
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            answer = await client.get(url)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


class Supervisor:
    def __init__(
        self,
        run_dir: Path,
        *,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
        give_up_after: int = 5,
        window_s: float = 60.0,
    ) -> None:
        self.run_dir = run_dir
        self._services: list[_Running] = []
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._give_up_after = give_up_after
        self._window_s = window_s
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def snapshot(self) -> dict[str, Any]:
        return {
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "services": [asdict(s.status) for s in self._services],
        }

    def _write_state(self) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.snapshot(), indent=2))
        temporary.replace(self.state_file)

    async def _spawn(self, running: _Running) -> None:
        log_path = Path(running.status.log_file)
        handle = await asyncio.to_thread(log_path.open, "ab")
        try:
            running.process = await asyncio.create_subprocess_exec(
                *running.spec.argv,
                env={**os.environ, **running.spec.env},
                stdout=handle,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            handle.close()
        running.status.pid = running.process.pid
        running.status.started_at = time.time()
        running.status.state = "running"
        running.status.ready = False
        self._write_state()
        log.info("service started", service=running.spec.name, pid=running.process.pid)

    async def _watch(self, running: _Running) -> None:
        while not self._stopping.is_set():
            await self._spawn(running)
            assert running.process is not None
            code = await running.process.wait()
            running.status.last_exit = code
            running.status.ready = False
            if self._stopping.is_set():
                break
            now = time.monotonic()
            running.recent_deaths = [
                t for t in running.recent_deaths if now - t < self._window_s
            ] + [now]
            if len(running.recent_deaths) > self._give_up_after:
                running.status.state = "failed"
                self._write_state()
                log.error("service keeps dying; left down", service=running.spec.name)
                return
            delay = min(
                self._max_backoff_s,
                self._base_backoff_s * 2 ** (len(running.recent_deaths) - 1),
            )
            running.status.state = "restarting"
            running.status.restarts += 1
            self._write_state()
            log.warning(
                "service died; restarting",
                service=running.spec.name,
                exit_code=code,
                delay_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _probe(self) -> None:
        while not self._stopping.is_set():
            changed = False
            for running in self._services:
                url = running.spec.ready_url
                alive = (
                    running.process is not None and running.process.returncode is None
                )
                ready = alive and (url is None or await http_ready(url))
                if ready != running.status.ready:
                    running.status.ready = ready
                    changed = True
            if changed:
                self._write_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 2.0)

    def begin(self) -> None:
        """Create the run folder, take the stop signals, start probing."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self._write_state()
        self._tasks.append(asyncio.create_task(self._probe()))

    async def start(
        self, spec: ServiceSpec, *, wait_ready_s: float | None = None
    ) -> bool:
        """Start and supervise one service; optionally wait until it is ready."""
        log_file = str(self.run_dir / f"{spec.name}.log")
        running = _Running(spec, ServiceState(spec.name, log_file=log_file))
        self._services.append(running)
        self._tasks.append(asyncio.create_task(self._watch(running)))
        if wait_ready_s is None:
            return True
        deadline = time.monotonic() + wait_ready_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            alive = running.process is not None and running.process.returncode is None
            if alive and (spec.ready_url is None or await http_ready(spec.ready_url)):
                running.status.ready = True
                self._write_state()
                return True
            if running.status.state == "failed":
                return False
            await asyncio.sleep(0.2)
        return False

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def stop(self) -> None:
        self._stopping.set()
        for running in reversed(self._services):
            await self._terminate(running)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._write_state()

    async def _terminate(self, running: _Running) -> None:
        process = running.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), running.spec.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        running.status.state = "stopped"
        running.status.ready = False
        running.status.pid = None
