"""The whole mesh on one machine: ``python -m standins.devmesh``, via ``dev up``.

In this order, each step waiting for the one before it:

1. moto's server mode and the attested KMS gate, as supervised processes;
2. provisioning: keys with the trust model's policies, the sealed demo bundle, the
   worker measured with the bundle baked in (``standins.provision``); the bucket;
3. a fresh database with the migrations applied;
4. results, encryptor, gateway, the enclave worker (simulated NSM, loopback TCP
   instead of vsock) and its enclave proxy, each its own supervised process.

Every ``dev up`` starts clean: new KMS keys (moto keeps nothing), an empty bucket,
a re-created database. ``mesh.json`` in the run folder says where everything
listens; ``dev-token`` holds a token minted for the demo tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from shared.logging import configure_logging, get_logger
from standins.devstate import load_or_create_principals, write_gate_config
from standins.nsm import DevPki
from standins.provision import DevPrincipal, provision
from standins.supervisor import ServiceSpec, Supervisor

log = get_logger(__name__)

DEMO_TENANT = "demo-hospital"
DEMO_SCOPES = ("jobs:submit", "jobs:read", "results:read", "results:decrypt", "admin")
PYTHON = sys.executable


@dataclass(frozen=True)
class MeshPorts:
    gateway: int = 8080
    encryptor: int = 8081
    results: int = 8082
    proxy_health: int = 9102
    worker: int = 5005
    relay: int = 8000
    moto: int = 5055
    kms_gate: int = 4599

    @classmethod
    def free(cls) -> MeshPorts:
        """Free loopback ports, so a test mesh runs beside anything else."""
        sockets = []
        for _ in range(len(cls.__dataclass_fields__)):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        ports = [s.getsockname()[1] for s in sockets]
        for probe in sockets:
            probe.close()
        return cls(*ports)


@dataclass(frozen=True)
class MeshConfig:
    state_dir: Path
    ports: MeshPorts
    database: str = "obscura_dev"
    topology_prefix: str = "obscura-dev"
    bucket: str = "obscura-dev-images"
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    worker_slots: int = 2
    torch_threads: int = 2

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def database_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}"


def _http(port: int, path: str = "/readyz") -> str:
    return f"http://127.0.0.1:{port}{path}"


def _keys(prefix: str, principal: DevPrincipal) -> dict[str, str]:
    return {
        f"{prefix}AWS_ACCESS_KEY_ID": principal.access_key_id,
        f"{prefix}AWS_SECRET_ACCESS_KEY": principal.secret_access_key,
    }


def service_specs(
    config: MeshConfig,
    principals: dict[str, DevPrincipal],
    internal_token: str,
    bundle: Path,
    hospital_key: str,
    model_name: str,
) -> list[ServiceSpec]:
    """The five services with exactly the settings each reads."""
    ports = config.ports
    kms_url = f"http://127.0.0.1:{ports.kms_gate}"
    moto_url = f"http://127.0.0.1:{ports.moto}"
    common = {"PYTHONUNBUFFERED": "1"}
    results = {
        "OBSCURA_RESULTS_PORT": str(ports.results),
        "OBSCURA_RESULTS_DATABASE_URL": config.database_url(),
        "OBSCURA_RESULTS_AMQP_URL": config.amqp_url,
        "OBSCURA_RESULTS_TOPOLOGY_PREFIX": config.topology_prefix,
        "OBSCURA_RESULTS_INTERNAL_TOKEN": internal_token,
        "OBSCURA_RESULTS_KMS_ENDPOINT_URL": kms_url,
        **_keys("OBSCURA_RESULTS_", principals["results"]),
    }
    encryptor = {
        "OBSCURA_ENCRYPTOR_PORT": str(ports.encryptor),
        "OBSCURA_ENCRYPTOR_INTERNAL_TOKEN": internal_token,
        "OBSCURA_ENCRYPTOR_BUCKET": config.bucket,
        "OBSCURA_ENCRYPTOR_S3_ENDPOINT_URL": moto_url,
        "OBSCURA_ENCRYPTOR_KMS_ENDPOINT_URL": kms_url,
        "OBSCURA_ENCRYPTOR_HOSPITAL_KEY_ID": hospital_key,
        "OBSCURA_ENCRYPTOR_AMQP_URL": config.amqp_url,
        "OBSCURA_ENCRYPTOR_TOPOLOGY_PREFIX": config.topology_prefix,
        **_keys("OBSCURA_ENCRYPTOR_", principals["encryptor"]),
    }
    gateway = {
        "OBSCURA_GATEWAY_PORT": str(ports.gateway),
        "OBSCURA_GATEWAY_INTERNAL_TOKEN": internal_token,
        "OBSCURA_GATEWAY_RESULTS_URL": _http(ports.results, ""),
        "OBSCURA_GATEWAY_ENCRYPTOR_URL": _http(ports.encryptor, ""),
        "OBSCURA_GATEWAY_DEFAULT_MODEL": model_name,
    }
    worker = {
        "OBSCURA_WORKER_TRANSPORT": "tcp",
        "OBSCURA_WORKER_LISTEN_PORT": str(ports.worker),
        "OBSCURA_WORKER_KMS_RELAY_PORT": str(ports.relay),
        "OBSCURA_WORKER_KMS_SCHEME": "http",
        "OBSCURA_WORKER_BUNDLE_DIR": str(bundle),
        "OBSCURA_WORKER_HOSPITAL_KEY_ID": hospital_key,
        "OBSCURA_WORKER_SLOTS": str(config.worker_slots),
        "OBSCURA_WORKER_TORCH_THREADS": str(config.torch_threads),
        "OBSCURA_DEV_STATE_DIR": str(config.state_dir),
    }
    enclave = principals["enclave"]
    proxy = {
        "OBSCURA_PROXY_AMQP_URL": config.amqp_url,
        "OBSCURA_PROXY_TOPOLOGY_PREFIX": config.topology_prefix,
        "OBSCURA_PROXY_S3_ENDPOINT_URL": moto_url,
        "OBSCURA_PROXY_S3_ACCESS_KEY_ID": enclave.access_key_id,
        "OBSCURA_PROXY_S3_SECRET_ACCESS_KEY": enclave.secret_access_key,
        "OBSCURA_PROXY_WORKER_TRANSPORT": "tcp",
        "OBSCURA_PROXY_WORKER_PORT": str(ports.worker),
        "OBSCURA_PROXY_RELAY_TRANSPORT": "tcp",
        "OBSCURA_PROXY_RELAY_PORT": str(ports.relay),
        "OBSCURA_PROXY_KMS_UPSTREAM_HOST": "127.0.0.1",
        "OBSCURA_PROXY_KMS_UPSTREAM_PORT": str(ports.kms_gate),
        "OBSCURA_PROXY_WORKER_ACCESS_KEY_ID": enclave.access_key_id,
        "OBSCURA_PROXY_WORKER_SECRET_ACCESS_KEY": enclave.secret_access_key,
        "OBSCURA_PROXY_HEALTH_PORT": str(ports.proxy_health),
    }
    module = [PYTHON, "-m"]
    return [
        ServiceSpec(
            "results",
            [*module, "services.results", "serve"],
            common | results,
            _http(ports.results),
        ),
        ServiceSpec(
            "encryptor",
            [*module, "services.encryptor"],
            common | encryptor,
            _http(ports.encryptor),
        ),
        ServiceSpec(
            "gateway",
            [*module, "services.gateway"],
            common | gateway,
            _http(ports.gateway),
        ),
        ServiceSpec("enclave-worker", [*module, "standins.enclave"], common | worker),
        ServiceSpec(
            "enclave-proxy",
            [*module, "services.enclave_proxy"],
            common | proxy,
            _http(ports.proxy_health),
        ),
    ]


async def reset_database(config: MeshConfig) -> None:
    connection = await asyncpg.connect(config.postgres_dsn, timeout=5)
    try:
        await connection.execute(
            f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)'
        )
        await connection.execute(f'CREATE DATABASE "{config.database}"')
    finally:
        await connection.close()


async def create_bucket(config: MeshConfig, principal: DevPrincipal) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{config.ports.moto}",
        aws_access_key_id=principal.access_key_id,
        aws_secret_access_key=principal.secret_access_key,
    ) as s3:
        await s3.create_bucket(Bucket=config.bucket)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


async def _start_or_fail(
    supervisor: Supervisor, spec: ServiceSpec, wait_s: float
) -> None:
    if not await supervisor.start(spec, wait_ready_s=wait_s):
        raise RuntimeError(
            f"{spec.name} did not become ready within {wait_s} s; see"
            f" {supervisor.run_dir / (spec.name + '.log')}"
        )


async def run(config: MeshConfig) -> None:
    from services.results.db import make_engine, migrate
    from services.results.tokens import create_token

    config.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(config.run_dir)
    supervisor.begin()
    ports = config.ports
    try:
        pki = DevPki.load_or_create(config.state_dir)
        principals = load_or_create_principals(config.state_dir)
        await _start_or_fail(
            supervisor,
            ServiceSpec(
                "moto",
                [PYTHON, "-m", "standins.moto_server", "--port", str(ports.moto)],
                {},
                _http(ports.moto, "/moto-api/"),
            ),
            60,
        )
        gate_config = write_gate_config(
            config.state_dir, f"http://127.0.0.1:{ports.moto}", principals, pki
        )
        await _start_or_fail(
            supervisor,
            ServiceSpec(
                "kms-gate",
                [
                    PYTHON, "-m", "standins.kms_gate",
                    "--config", str(gate_config), "--port", str(ports.kms_gate),
                ],
                {},
                _http(ports.kms_gate, "/healthz"),
            ),
            60,
        )  # fmt: skip
        provision_dir = config.state_dir / "provisioned"
        provision_dir.mkdir(exist_ok=True)
        keys = await provision(
            f"http://127.0.0.1:{ports.kms_gate}", principals, provision_dir
        )
        await create_bucket(config, principals["admin"])
        await reset_database(config)
        await migrate(config.database_url())
        engine = make_engine(config.database_url())
        try:
            token = await create_token(engine, DEMO_TENANT, list(DEMO_SCOPES), "dev up")
        finally:
            await engine.dispose()
        _write_private(config.state_dir / "dev-token", token + "\n")
        internal_token = secrets.token_urlsafe(24)
        mesh = {
            "gateway_url": _http(ports.gateway, ""),
            "ports": asdict(ports),
            "database_url": config.database_url(),
            "topology_prefix": config.topology_prefix,
            "bucket": config.bucket,
            "pcr0": keys.pcrs[0].hex(),
            "dev_root_pem": str(DevPki.root_certificate_path(config.state_dir)),
            "model": keys.manifest.name,
            "tenant": DEMO_TENANT,
            "token_file": str(config.state_dir / "dev-token"),
            "hospital_key": keys.hospital_key,
            "vendor_key": keys.vendor_key,
        }
        _write_private(config.run_dir / "mesh.json", json.dumps(mesh, indent=2))
        for spec in service_specs(
            config, principals, internal_token, keys.bundle, keys.hospital_key,
            keys.manifest.name,
        ):  # fmt: skip
            await _start_or_fail(supervisor, spec, 120)
        (config.run_dir / "ready").write_text("ready\n")
        log.info("mesh ready", gateway=mesh["gateway_url"])
    except Exception as exc:
        (config.run_dir / "failed").write_text(f"{exc}\n")
        log.error("mesh start failed", error=str(exc))
        await supervisor.stop()
        raise
    await supervisor.stopping.wait()
    await supervisor.stop()
    (config.run_dir / "ready").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Obscura mesh locally.")
    parser.add_argument("--state-dir", type=Path, default=Path(".obscura"))
    parser.add_argument("--free-ports", action="store_true")
    parser.add_argument("--database", default="obscura_dev")
    parser.add_argument("--topology-prefix", default="obscura-dev")
    parser.add_argument("--bucket", default="obscura-dev-images")
    parser.add_argument("--worker-slots", type=int, default=2)
    args = parser.parse_args(argv)
    configure_logging("devmesh", json=False)
    config = MeshConfig(
        state_dir=args.state_dir.resolve(),
        ports=MeshPorts.free() if args.free_ports else MeshPorts(),
        database=args.database,
        topology_prefix=args.topology_prefix,
        bucket=args.bucket,
        worker_slots=args.worker_slots,
    )
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
