"""The enclave worker: boot, attest, unlock, then serve jobs over the link.

Boot waits for the proxy to hand over KMS credentials, then unlocks the model;
the worker reports ready only once the model is loaded. Each connection carries
one exchange (see ``shared.enclave_protocol``). Jobs run concurrently up to
``slots``; the forward pass runs on one inference thread that owns torch's
intra-op threads, so concurrent jobs overlap their I/O, unsealing and decoding
with each other's inference instead of fighting over the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from services.enclave_worker.jobs import (
    job_failure_reason,
    release_freed_memory,
    run_job,
)
from services.enclave_worker.kms_access import EnclaveKeys
from services.enclave_worker.settings import WorkerSettings
from services.enclave_worker.unlock import UnlockedModel, unlock_model
from shared.attestation import parse_attestation
from shared.cms import generate_recipient_key, public_key_der
from shared.enclave_protocol import (
    OP_CREDENTIALS,
    OP_STATUS,
    HandedCredentials,
    JobRequest,
    WorkerStatus,
)
from shared.errors import ObscuraError, Reason
from shared.keys import Recipient
from shared.kms import KmsEndpoint
from shared.link import (
    Control,
    ErrorInfo,
    FrameType,
    JobHeader,
    Link,
    LinkError,
    LinkLimits,
    ProtocolError,
    ResultHeader,
    Role,
    TcpTransport,
    Transport,
    VsockTransport,
    server_hello,
)
from shared.logging import bind_context, get_logger, unbind_context
from shared.nsm import Nsm
from shared.relay import Relay

log = get_logger(__name__)


@dataclass
class _State:
    ready: bool = False
    reason: str | None = "awaiting_credentials"
    message: str | None = "waiting for the proxy to hand over KMS credentials"
    busy: int = 0


class Worker:
    def __init__(self, settings: WorkerSettings, nsm: Nsm) -> None:
        self.settings = settings
        self.nsm = nsm
        self.state = _State()
        self.model: UnlockedModel | None = None
        self._private_key: RSAPrivateKey = generate_recipient_key()
        self._public_key_der = public_key_der(self._private_key)
        self._slots = asyncio.Semaphore(settings.slots)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        # A fixed set of decode threads, not the loop's growing default pool:
        # each new thread gets its own malloc arena, which keeps what it freed.
        self._decoding = ThreadPoolExecutor(settings.slots, thread_name_prefix="decode")
        self._keys: EnclaveKeys | None = None
        self._unlocking: asyncio.Task[None] | None = None
        self._servers: list[asyncio.Server] = []
        self._tunnel: Relay | None = None
        self.pcr0: str | None = None
        self.tunnel_port = 0
        self.listen_port = 0
        self.completed = 0

    # Recipients -----------------------------------------------------------

    async def recipient(self) -> Recipient:
        """A fresh attestation document binding this enclave's RSA public key."""
        document = await asyncio.to_thread(
            self.nsm.attest, public_key=self._public_key_der
        )
        if self.pcr0 is None:
            self.pcr0 = parse_attestation(document).pcrs[0].hex()
        return Recipient(document, self._private_key)

    # Start and stop -------------------------------------------------------

    def _listen_transport(self) -> Transport:
        if self.settings.transport == "vsock":
            return VsockTransport.listening(self.settings.listen_port)
        return TcpTransport(self.settings.tcp_host, self.settings.listen_port)

    def _relay_transport(self) -> Transport:
        if self.settings.transport == "vsock":
            return VsockTransport.to_parent(self.settings.kms_relay_port)
        return TcpTransport("127.0.0.1", self.settings.kms_relay_port)

    async def start(self) -> None:
        relay_transport = self._relay_transport()
        self._tunnel = Relay(relay_transport.connect, name="kms-tunnel")
        tunnel_server = await asyncio.start_server(
            self._tunnel.handle, "127.0.0.1", self.settings.kms_tunnel_port
        )
        self.tunnel_port = tunnel_server.sockets[0].getsockname()[1]
        endpoint = KmsEndpoint(
            region=self.settings.aws_region,
            endpoint_url=self.settings.kms_endpoint_url(self.tunnel_port),
            connect_timeout_s=self.settings.kms_connect_timeout_s,
            read_timeout_s=self.settings.kms_read_timeout_s,
            loopback_host=self.settings.kms_hostname(),
        )
        self._keys = EnclaveKeys(endpoint)
        server = await self._listen_transport().serve(self.handle)
        self._servers = [tunnel_server, server]
        if self.settings.transport == "tcp":
            self.listen_port = server.sockets[0].getsockname()[1]
        log.info("worker listening", port=self.listen_port, slots=self.settings.slots)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._unlocking is not None:
            self._unlocking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._unlocking
        # Closing the KMS client first lets its tunnel connections end cleanly.
        if self._keys is not None:
            await self._keys.close()
        if self._tunnel is not None:
            await self._tunnel.aclose()
        self._inference.shutdown(wait=False, cancel_futures=True)
        self._decoding.shutdown(wait=False, cancel_futures=True)

    # Unlock ---------------------------------------------------------------

    def _begin_unlock(self) -> None:
        if self.model is not None:
            return
        if self._unlocking is not None and not self._unlocking.done():
            return
        self._unlocking = asyncio.create_task(self._unlock())

    async def _unlock(self) -> None:
        assert self._keys is not None
        self.state.reason, self.state.message = "unlocking", "unlocking the model"
        try:
            recipient = await self.recipient()
            self.model = await unlock_model(
                self.settings.bundle_dir, self._keys, recipient
            )
        except ObscuraError as exc:
            self.state.reason = Reason.MODEL_UNAVAILABLE.value
            self.state.message = (
                f"model unlock failed ({exc.reason.value}): {exc}. Is this image's"
                " PCR0 approved in the vendor key policy?"
            )
            log.error("model unlock failed", reason=exc.reason.value, error=str(exc))
            return
        self.state.ready, self.state.reason, self.state.message = True, None, None
        # The loaded model lives as long as the process: keep it and the rest of
        # start-up out of every full collection, which held the loop 0.1 s.
        gc.freeze()

    # Connections ----------------------------------------------------------

    def limits(self) -> LinkLimits:
        return LinkLimits(read_timeout=self.settings.read_timeout_s)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            link = await server_hello(
                reader, writer, role=Role.WORKER, limits=self.limits()
            )
        except (LinkError, ProtocolError) as exc:
            log.warning("handshake refused", error=str(exc))
            return
        async with link:
            try:
                await self._serve(link)
            except (LinkError, ProtocolError) as exc:
                log.warning("connection ended", error=str(exc), reason=exc.reason.value)

    async def _serve(self, link: Link) -> None:
        frame = await link.read_frame()
        if frame.type is FrameType.CONTROL:
            await self._control(link, Control.from_frame(frame))
        elif frame.type is FrameType.JOB:
            await self._job(link, JobHeader.from_frame(frame))
        else:
            raise ProtocolError(f"expected CONTROL or JOB first, got {frame!r}.")

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            ready=self.state.ready,
            reason=self.state.reason,
            message=self.state.message,
            slots=self.settings.slots,
            busy=self.state.busy,
            model=self.model.identity() if self.model else None,
            pcr0=self.pcr0,
            has_credentials=bool(self._keys and self._keys.credentials),
        )

    async def _control(self, link: Link, control: Control) -> None:
        if control.op == OP_STATUS:
            fields = self.status().to_fields()
        elif control.op == OP_CREDENTIALS:
            assert self._keys is not None
            await self._keys.update(HandedCredentials.from_fields(control.fields))
            self._begin_unlock()
            fields = {"ok": True}
        else:
            raise ProtocolError(f"unknown CONTROL operation {control.op!r}.")
        await link.write_frame(
            Control(control.op, fields).to_frame(FrameType.CONTROL_REPLY)
        )

    async def _job(self, link: Link, header: JobHeader) -> None:
        bind_context(job_id=header.job_id)
        try:
            await self._job_bound(link, header)
        finally:
            unbind_context("job_id")

    async def _job_bound(self, link: Link, header: JobHeader) -> None:
        body = link.receive_body(expected_size=header.body_size)
        try:
            if self.model is None or self._keys is None:
                raise ObscuraError(
                    f"the worker is not ready: {self.state.message}",
                    reason=Reason.MODEL_UNAVAILABLE,
                )
            request = JobRequest.from_header(header)
            async with self._slots:
                self.state.busy += 1
                try:
                    result = await asyncio.wait_for(
                        run_job(
                            request,
                            body,
                            model=self.model,
                            keys=self._keys,
                            recipient=await self.recipient(),
                            nsm=self.nsm,
                            hospital_key_id=self.settings.hospital_key_id,
                            inference=self._inference,
                            max_sealed_bytes=self.settings.max_sealed_image_bytes,
                            decoding=self._decoding,
                        ),
                        self.settings.job_timeout_s,
                    )
                finally:
                    self.state.busy -= 1
                    await asyncio.get_running_loop().run_in_executor(
                        self._decoding, release_freed_memory
                    )
        except (LinkError, ProtocolError):
            raise
        except Exception as exc:  # every failure becomes an ERROR frame
            await self._fail(link, header.job_id, exc, body)
            return
        await body.aclose()
        receipt = json.dumps(result.receipt.to_json()).encode()
        attributes = {
            "model_name": self.model.manifest.name,
            "model_version": self.model.manifest.version,
            "model_sha256": self.model.manifest.plaintext_sha256,
            "timings": json.dumps({k: round(v, 6) for k, v in result.timings.items()}),
        }
        await link.send_result(
            ResultHeader(
                job_id=header.job_id,
                body_size=len(result.sealed_result),
                receipt=receipt,
                attributes=attributes,
            ),
            [result.sealed_result],
        )
        self.completed += 1
        log.info(
            "job done",
            **{
                f"{stage}_s": round(value, 4) for stage, value in result.timings.items()
            },
        )

    async def _fail(
        self,
        link: Link,
        job_id: str,
        exc: Exception,
        body: AsyncGenerator[bytes, None],
    ) -> None:
        reason, retryable = job_failure_reason(exc)
        if isinstance(exc, TimeoutError):
            reason, retryable = Reason.TIMEOUT, True
        message = str(exc) or type(exc).__name__
        log.warning(
            "job failed", reason=reason.value, retryable=retryable, error=message
        )
        if reason is Reason.INTERNAL:
            log.debug("job failure detail", exc_info=exc)
        # Drain what is left of the body so the link stays in step for the ERROR.
        with contextlib.suppress(Exception):
            async for _ in body:
                pass
        await link.send_error(
            ErrorInfo(reason, message[:900], retryable=retryable, job_id=job_id)
        )
