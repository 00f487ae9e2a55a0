"""``obscura dev up|down|status|token``: the local mesh on the stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

RABBITMQ_HINT = (
    "start it with `rabbitmq-server -detached` (Debian package rabbitmq-server),"
    " or `docker run -d -p 127.0.0.1:5672:5672 rabbitmq:3`"
)
POSTGRES_HINT = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql)"
    " main start` (Debian), or `docker run -d -p 127.0.0.1:5432:5432"
    " -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`"
)


def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = run_dir(state_dir) / "state.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def read_mesh(state_dir: Path) -> dict[str, Any]:
    path = run_dir(state_dir) / "mesh.json"
    if not path.exists():
        raise click.ClickException(
            f"no mesh has been started in {state_dir}; run `obscura dev up` first."
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    # A supervisor this process spawned stays its child: reap it if it exited,
    # or it would look alive as a zombie.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _preflight(amqp_url: str, postgres_dsn: str) -> list[str]:
    import aio_pika
    import asyncpg

    problems = []
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
        await connection.close()
    except Exception as exc:  # any failure here means "not usable"
        problems.append(
            f"RabbitMQ is not reachable at 127.0.0.1:5672 ({exc!r}); {RABBITMQ_HINT}."
        )
    try:
        pg = await asyncpg.connect(postgres_dsn, timeout=5)
        await pg.close()
    except Exception as exc:
        problems.append(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 ({exc!r}); {POSTGRES_HINT}."
        )
    return problems


def up(
    state_dir: Path,
    *,
    free_ports: bool,
    timeout_s: float,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    state = read_state(state_dir)
    if state and alive(state.get("supervisor_pid")):
        raise click.ClickException(
            f"a mesh is already running (supervisor pid {state['supervisor_pid']});"
            " run `obscura dev down` first."
        )
    problems = asyncio.run(
        _preflight(
            "amqp://guest:guest@127.0.0.1:5672/",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        )
    )
    if problems:
        raise click.ClickException("\n".join(problems))
    folder = run_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for marker in ("ready", "failed", "state.json"):
        (folder / marker).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "standins.devmesh", "--state-dir", str(state_dir)]
    if free_ports:
        argv.append("--free-ports")
    argv.extend(extra_args)
    # posix_spawn rather than Popen: the supervisor outlives this command, and a
    # Popen object dropped while its child runs only produces a warning.
    log = os.open(folder / "devmesh.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (folder / "ready").exists():
            return read_mesh(state_dir)
        failed = folder / "failed"
        if failed.exists() or not alive(pid):
            reason = failed.read_text().strip() if failed.exists() else "it exited"
            down(state_dir, quiet=True)
            raise click.ClickException(
                f"the mesh did not start: {reason}. Logs are in {folder}."
            )
        time.sleep(0.3)
    down(state_dir, quiet=True)
    raise click.ClickException(
        f"the mesh was not ready after {timeout_s:.0f} s; logs are in {folder}."
    )


def down(state_dir: Path, *, quiet: bool = False, timeout_s: float = 60.0) -> int:
    """Stop the supervisor, which stops exactly the processes it started."""
    state = read_state(state_dir)
    if not state:
        return 0
    supervisor = int(state.get("supervisor_pid") or 0)
    if alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    stopped = 0
    for service in state.get("services", []):
        pid = service.get("pid")
        if alive(pid):
            # The supervisor did not get to it; end the whole process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped += 1
    with contextlib.suppress(ProcessLookupError):
        if alive(supervisor):
            os.kill(supervisor, signal.SIGKILL)
    (run_dir(state_dir) / "ready").unlink(missing_ok=True)
    if not quiet:
        click.echo(f"stopped {stopped} processes of the mesh in {state_dir}")
    return stopped


def status(state_dir: Path) -> dict[str, Any]:
    state = read_state(state_dir) or {"services": []}
    supervisor = state.get("supervisor_pid")
    running = alive(supervisor)
    services = [
        {
            "name": s["name"],
            "pid": s["pid"] if running else None,
            "state": s["state"] if running else "stopped",
            "ready": bool(s["ready"]) and running,
            "restarts": s["restarts"],
            "log_file": s["log_file"],
        }
        for s in state["services"]
    ]
    mesh_file = run_dir(state_dir) / "mesh.json"
    mesh = json.loads(mesh_file.read_text()) if mesh_file.exists() else {}
    return {
        "supervisor": {"pid": supervisor, "alive": running},
        "gateway_url": mesh.get("gateway_url"),
        "services": services,
    }


def print_status(report: dict[str, Any]) -> None:
    supervisor = report["supervisor"]
    click.echo(
        f"supervisor pid {supervisor['pid']} "
        f"({'running' if supervisor['alive'] else 'not running'});"
        f" gateway {report['gateway_url']}"
    )
    click.echo(
        f"{'service':<16}{'pid':>8}  {'state':<11}{'ready':<7}{'restarts':>8}  log"
    )
    for s in report["services"]:
        click.echo(
            f"{s['name']:<16}{s['pid'] or '-':>8}  {s['state']:<11}"
            f"{'yes' if s['ready'] else 'no':<7}{s['restarts']:>8}  {s['log_file']}"
        )
