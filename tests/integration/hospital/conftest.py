"""Fixtures for the hospital-side services against real moto S3, the KMS gate and
RabbitMQ: a bucket, a hospital key, a private topology and an encryptor app."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aiobotocore.session import get_session

from services.encryptor.app import Dependencies, build_dependencies, create_app
from services.encryptor.settings import EncryptorSettings
from shared import broker
from shared.keypolicy import EnclaveMeasurement, HospitalPrincipals, hospital_key_policy
from standins.kms_gate import GateServer
from standins.moto_server import MotoServer
from tests.integration.conftest import (
    ACCOUNT_ID,
    ENCLAVE_PCRS,
    PRINCIPALS,
    REGION,
    KmsClientFactory,
)

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
INTERNAL_TOKEN = "internal-test-token"


@contextlib.asynccontextmanager
async def s3_client(moto_server: MotoServer) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=moto_server.url,
        aws_access_key_id="AKIATESTS3000000000",
        aws_secret_access_key="x",
    ) as client:
        yield client


@pytest.fixture
async def bucket(moto_server: MotoServer) -> str:
    name = f"obscura-test-{secrets.token_hex(4)}"
    async with s3_client(moto_server) as s3:
        await s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def hospital_key(kms_client: KmsClientFactory) -> str:
    principals = HospitalPrincipals(
        admin=PRINCIPALS["admin"].arn,
        encryptor=PRINCIPALS["encryptor"].arn,
        enclave=PRINCIPALS["enclave"].arn,
        results=PRINCIPALS["results"].arn,
    )
    policy = hospital_key_policy(
        principals, EnclaveMeasurement({0: ENCLAVE_PCRS[0].hex()})
    )
    async with kms_client("admin") as kms:
        created = await kms.create_key(Policy=json.dumps(policy))
    key_id = created["KeyMetadata"]["KeyId"]
    return f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{key_id}"


@pytest.fixture
async def topology() -> AsyncIterator[broker.Topology]:
    names = broker.Topology.prefixed(f"test-{secrets.token_hex(4)}")
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        await broker.declare(channel, names)
        yield names
        await broker.delete(channel, names)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


SettingsFactory = Callable[..., EncryptorSettings]


@pytest.fixture
def encryptor_settings(
    moto_server: MotoServer,
    kms_gate: GateServer,
    bucket: str,
    hospital_key: str,
    topology: broker.Topology,
) -> SettingsFactory:
    prefix = topology.jobs_exchange.removesuffix(".jobs")
    principal = PRINCIPALS["encryptor"]

    def make(**overrides: Any) -> EncryptorSettings:
        values: dict[str, Any] = {
            "internal_token": INTERNAL_TOKEN,
            "bucket": bucket,
            "s3_endpoint_url": moto_server.url,
            "kms_endpoint_url": kms_gate.url,
            "hospital_key_id": hospital_key,
            "aws_access_key_id": principal.access_key_id,
            "aws_secret_access_key": principal.secret_access_key,
            "amqp_url": AMQP_URL,
            "topology_prefix": prefix,
            "part_size": 5 * 1024 * 1024,
            "connect_timeout_s": 2.0,
            "publish_timeout_s": 2.0,
        }
        return EncryptorSettings(**(values | overrides))

    return make


@contextlib.asynccontextmanager
async def encryptor_app(
    settings: EncryptorSettings,
    wrap: Callable[[Dependencies], Dependencies] | None = None,
) -> AsyncIterator[Any]:
    """An encryptor app with real dependencies, opened without a server."""
    async with contextlib.AsyncExitStack() as stack:
        deps = await build_dependencies(settings, stack)
        yield create_app(settings, wrap(deps) if wrap else deps)
