import asyncio
import json
import sys
from pathlib import Path

import pytest

from standins.supervisor import ServiceSpec, Supervisor

pytestmark = pytest.mark.timeout(30)


def spec(name: str, code: str) -> ServiceSpec:
    return ServiceSpec(name=name, argv=[sys.executable, "-c", code], env={})


def state(run_dir: Path) -> dict:
    return {
        s["name"]: s
        for s in json.loads((run_dir / "state.json").read_text())["services"]
    }


async def test_supervisor_restarts_a_dying_service_with_backoff(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, base_backoff_s=0.05, give_up_after=100)
    supervisor.begin()
    await supervisor.start(spec("flaky", "import sys; print('up'); sys.exit(3)"))
    await asyncio.sleep(1.0)
    await supervisor.stop()
    seen = state(tmp_path)["flaky"]
    assert seen["restarts"] >= 2
    assert seen["last_exit"] == 3
    assert "up" in (tmp_path / "flaky.log").read_text()


async def test_supervisor_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, base_backoff_s=0.01, give_up_after=2)
    supervisor.begin()
    await supervisor.start(spec("broken", "raise SystemExit(1)"))
    await asyncio.sleep(1.0)
    assert state(tmp_path)["broken"]["state"] == "failed"
    await supervisor.stop()


async def test_supervisor_stops_exactly_what_it_started(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    supervisor.begin()
    ready = await supervisor.start(
        spec("sleeper", "import time; time.sleep(60)"), wait_ready_s=5
    )
    assert ready
    pid = state(tmp_path)["sleeper"]["pid"]
    await supervisor.stop()
    after = state(tmp_path)["sleeper"]
    assert after["state"] == "stopped" and after["pid"] is None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
