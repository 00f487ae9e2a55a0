"""Fakes for gateway tests: a results service honouring the internal contract,
and an encryptor app (the real one) over in-memory storage and publisher."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.encryptor.app import Dependencies
from services.encryptor.app import create_app as create_encryptor
from services.encryptor.publisher import BrokerUnavailableError
from services.encryptor.sealing import Sealer, SealerConfig
from services.encryptor.settings import EncryptorSettings
from services.encryptor.storage import Part
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.messages import JobMessage
from tests.fakes import FakeKeyService

INTERNAL = "internal-test-token"
TOKENS = {
    "tok-submit": ("t1", "st-olaf", ["jobs:submit", "jobs:read", "results:read"]),
    "tok-read": ("t2", "st-olaf", ["jobs:read"]),
    "tok-other": ("t3", "mercy", ["jobs:submit", "jobs:read", "results:read"]),
}


class MemoryStore:
    def __init__(self) -> None:
        self.uploads: dict[str, list[bytes]] = {}
        self.objects: dict[str, bytes] = {}
        self.aborted: list[str] = []

    async def create_multipart(self, key: str) -> str:
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = []
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> Part:
        self.uploads[upload_id].append(body.getvalue())
        return Part(number, f"etag-{number}")

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        self.objects[key] = b"".join(self.uploads.pop(upload_id))

    async def abort(self, key: str, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)
        self.aborted.append(key)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def check(self) -> None:
        return None


class MemoryPublisher:
    def __init__(self) -> None:
        self.messages: list[JobMessage] = []
        self.down = False

    async def publish(self, message: JobMessage) -> None:
        if self.down:
            raise BrokerUnavailableError("RabbitMQ did not confirm the message.")
        self.messages.append(message)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class FakeResults:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    reads: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/internal/v1/auth")
        async def auth(request: Request) -> Response:
            token = (await request.json())["token"]
            if token not in TOKENS:
                return JSONResponse({"error": "unauthorized"}, 401)
            token_id, tenant, scopes = TOKENS[token]
            return JSONResponse(
                {"token_id": token_id, "tenant": tenant, "scopes": scopes, "name": "x"}
            )

        @app.post("/internal/v1/jobs")
        async def create(request: Request) -> Response:
            body = await request.json()
            key = (body["tenant"], body["idempotency_key"] or uuid.uuid4().hex)
            if key in self.keys:
                job = self.jobs[self.keys[key]]
                if job["status"] == "received":
                    return JSONResponse({"error": "idempotency_conflict"}, 409)
                return JSONResponse(
                    {"job_id": job["job_id"], "status": job["status"], "created": False}
                    | {"body_sha256": job.get("body_sha256")}
                )
            job_id = str(uuid.uuid4())
            self.jobs[job_id] = {"job_id": job_id, "status": "received"} | body
            self.keys[key] = job_id
            return JSONResponse(
                {"job_id": job_id, "status": "received", "created": True}, 201
            )

        @app.post("/internal/v1/jobs/{job_id}/queued")
        async def queued(job_id: str, request: Request) -> Response:
            self.jobs[job_id] |= await request.json() | {"status": "queued"}
            return JSONResponse({"job_id": job_id, "status": "queued"})

        @app.delete("/internal/v1/jobs/{job_id}")
        async def delete(job_id: str) -> Response:
            job = self.jobs.pop(job_id)
            self.keys = {k: v for k, v in self.keys.items() if v != job_id}
            self.deleted.append(job["job_id"])
            return Response(status_code=204)

        @app.get("/internal/v1/jobs/{job_id}")
        async def read(job_id: str, tenant: str, actor: str) -> Response:
            self.reads.append((job_id, actor))
            job = self.jobs.get(job_id)
            if job is None or job["tenant"] != tenant:
                return JSONResponse({"error": "not_found"}, 404)
            return JSONResponse(job)

        return app


@dataclass
class Mesh:
    client: httpx.AsyncClient
    results: FakeResults
    store: MemoryStore
    publisher: MemoryPublisher
    keys: FakeKeyService


def build_mesh(**gateway_settings: Any) -> Mesh:
    results = FakeResults()
    store, publisher, keys = MemoryStore(), MemoryPublisher(), FakeKeyService()
    limit = gateway_settings.get("max_upload_bytes", 64 * 1024 * 1024)
    config = SealerConfig("bucket-1", keys.key_ids[0], 5 * 1024 * 1024, 65536, limit)
    sealer = Sealer(keys, store, publisher, config)
    encryptor = create_encryptor(
        EncryptorSettings(internal_token=INTERNAL, max_upload_bytes=limit),
        Dependencies(sealer, store, publisher),
    )
    gateway = create_app(
        GatewaySettings(internal_token=INTERNAL, **gateway_settings),
        results_transport=httpx.ASGITransport(app=results.app()),
        encryptor_transport=httpx.ASGITransport(app=encryptor),
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
    )
    return Mesh(client, results, store, publisher, keys)
