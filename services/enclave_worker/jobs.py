"""One job inside the enclave: sealed image in, sealed prediction and receipt out.

The stages, each timed: unwrap the image data key (KMS with Recipient), unseal
while the body streams in, decode, preprocess and forward (one inference thread),
seal the prediction under a fresh hospital data key bound to the job, and sign a
receipt over the hashes of what came in and what goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from services.enclave_worker.unlock import UnlockedModel
from shared.enclave_protocol import JobRequest
from shared.envelope import read_header, seal_bytes, unseal_body
from shared.errors import (
    CallerError,
    InternalError,
    ObscuraError,
    Reason,
    UnsupportedImageError,
)
from shared.imaging.decode import DecodedImage, decode_image
from shared.keys import DataKey, EncryptionContext, KeyService, Recipient
from shared.nsm import Nsm
from shared.receipt import Receipt, ReceiptRecord

VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


@dataclass
class Stopwatch:
    stages: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._mark
        self._mark = now


@dataclass(frozen=True)
class JobResult:
    sealed_result: bytes = field(repr=False)
    receipt: Receipt
    timings: dict[str, float]


class _PrefetchedKey:
    """A key service whose one data key was requested ahead of time.

    The result's data key does not depend on the prediction, so it is asked for
    while the image is decoded and the model runs, off the job's critical path.
    """

    def __init__(self, pending: asyncio.Task[DataKey]) -> None:
        self._pending = pending

    async def generate_data_key(
        self,
        key_id: str,
        context: EncryptionContext,
        *,
        recipient: Recipient | None = None,
    ) -> DataKey:
        return await self._pending

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        *,
        key_id: str | None = None,
        recipient: Recipient | None = None,
    ) -> bytes:
        raise InternalError("A prefetched data key cannot decrypt anything.")

    async def discard(self) -> None:
        self._pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ObscuraError):
            await self._pending


class _Hashing:
    """Passes a stream through while hashing and counting it."""

    def __init__(self, source: AsyncIterable[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self.digest = hashlib.sha256()
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._source:
            self.size += len(piece)
            if self.size > self._limit:
                raise CallerError(
                    f"The sealed image exceeds the worker's {self._limit}-byte limit."
                )
            self.digest.update(piece)
            yield piece


def _choose_view(request: JobRequest, decoded: DecodedImage) -> str:
    view = request.view or decoded.view
    if view not in VIEWS:
        raise UnsupportedImageError(
            f"The job names no usable view ({view!r}) and the image carries none;"
            f" send one of {', '.join(VIEWS)}."
        )
    return view


def release_freed_memory() -> None:
    """Hand memory freed by the last job back to the system (glibc only).

    Image-sized buffers freed by a job stay in the allocator's heaps otherwise,
    and the worker's footprint creeps up with the mix of image sizes it saw.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def decode_and_wipe(plaintext: bytearray) -> DecodedImage:
    """Decode the image, then zero its plaintext; both walk the whole buffer.

    Meant for an executor thread: on the event loop, copying and zeroing a large
    image held every other job's stream for a tenth of a second or more.
    """
    try:
        return decode_image(bytes(plaintext))
    finally:
        plaintext[:] = bytes(len(plaintext))


def prediction_document(
    request: JobRequest,
    model: UnlockedModel,
    view: str,
    scores: dict[str, float],
    decoded: DecodedImage,
) -> bytes:
    """The plaintext that gets sealed: probabilities per label, and provenance.

    The hash of the decoded pixels lets an authorised reader confirm which image
    the model saw; it is sealed with the rest, since outside the enclave it would
    let anyone holding a candidate image confirm that it was read.
    """
    return json.dumps(
        {
            "job_id": request.job_id,
            "view": view,
            "model": model.identity(),
            "architecture": model.manifest.architecture,
            "prediction": scores,
            "input": {
                "source": decoded.source,
                "shape": list(decoded.pixels.shape),
                "bits_stored": decoded.bits_stored,
                "pixels_sha256": hashlib.sha256(decoded.pixels.data).hexdigest(),
            },
        },
        sort_keys=True,
    ).encode()


async def run_job(
    request: JobRequest,
    body: AsyncIterable[bytes],
    *,
    model: UnlockedModel,
    keys: KeyService,
    recipient: Recipient,
    nsm: Nsm,
    hospital_key_id: str,
    inference: Executor,
    max_sealed_bytes: int,
    decoding: Executor | None = None,
) -> JobResult:
    """Run one job; decoding and hashing go to ``decoding`` (default: loop's)."""
    if request.model != model.manifest.name:
        raise CallerError(
            f"This enclave serves model {model.manifest.name!r}"
            f" {model.manifest.version}; the job asks for {request.model!r}.",
            reason=Reason.MODEL_UNAVAILABLE,
        )
    result_context = {
        "purpose": "result",
        "tenant": request.tenant,
        "job_id": request.job_id,
    }
    result_key = _PrefetchedKey(
        asyncio.create_task(
            keys.generate_data_key(hospital_key_id, result_context, recipient=recipient)
        )
    )
    try:
        return await _run(
            request, body, model, keys, recipient, nsm, result_key, inference,
            max_sealed_bytes, hospital_key_id, result_context, decoding,
        )  # fmt: skip
    finally:
        await result_key.discard()


async def _run(
    request: JobRequest,
    body: AsyncIterable[bytes],
    model: UnlockedModel,
    keys: KeyService,
    recipient: Recipient,
    nsm: Nsm,
    result_key: _PrefetchedKey,
    inference: Executor,
    max_sealed_bytes: int,
    hospital_key_id: str,
    result_context: dict[str, str],
    decoding: Executor | None,
) -> JobResult:
    watch = Stopwatch()
    image_context = {
        "purpose": "image",
        "tenant": request.tenant,
        "job_id": request.job_id,
    }
    sealed_in = _Hashing(body, max_sealed_bytes)
    header, rest = await read_header(sealed_in)
    watch.lap("receive")
    plaintext = bytearray()
    chunks = unseal_body(header, rest, keys, image_context, recipient=recipient)
    first = await anext(chunks, None)
    watch.lap("unwrap")
    if first is not None:
        plaintext += first
        async for piece in chunks:
            plaintext += piece
    watch.lap("unseal")
    loop = asyncio.get_running_loop()
    decoded = await loop.run_in_executor(decoding, decode_and_wipe, plaintext)
    del plaintext
    watch.lap("decode")
    view = _choose_view(request, decoded)
    scores, stages = await loop.run_in_executor(
        inference, model.engine.predict_timed, decoded.pixels, view
    )
    watch.lap("infer")
    watch.stages["preprocess"] = stages.preprocess
    watch.stages["forward"] = stages.forward
    del watch.stages["infer"]
    # Off the loop: it hashes every decoded pixel.
    document = await loop.run_in_executor(
        decoding, prediction_document, request, model, view, scores, decoded
    )
    del decoded
    sealed = bytes(
        await seal_bytes(
            document, result_key, hospital_key_id, result_context, recipient=recipient
        )
    )
    watch.lap("seal")
    record = ReceiptRecord(
        job_id=request.job_id,
        sealed_input_sha256=sealed_in.digest.hexdigest(),
        model_sha256=model.manifest.plaintext_sha256,
        sealed_result_sha256=hashlib.sha256(sealed).hexdigest(),
        nonce=request.nonce.hex(),
    )
    attestation = await asyncio.to_thread(
        nsm.attest, user_data=record.digest(), nonce=request.nonce
    )
    watch.lap("receipt")
    return JobResult(
        sealed_result=sealed,
        receipt=Receipt(record, attestation),
        timings=watch.stages,
    )


def job_failure_reason(exc: BaseException) -> tuple[Reason, bool]:
    """The reason code and retryability a failed job reports to the proxy."""
    if isinstance(exc, ObscuraError):
        return exc.reason, exc.retryable
    return Reason.INTERNAL, False
