"""Model unlock at boot: attest, unwrap the vendor's data key, check, load.

The bundle ships inside the enclave image. Its manifest names the encryption
context the model key is bound to; the vendor key policy releases that key only
to a ``Recipient`` whose attestation shows the approved PCR0. After unsealing,
the plaintext must hash to the manifest's value before anything parses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from services.enclave_worker.engine import Engine, ModelSpec
from shared.bundle import SEALED_NAME, BundleManifest, read_manifest
from shared.envelope import unseal
from shared.errors import IntegrityError, Reason
from shared.keys import KeyService, Recipient
from shared.logging import get_logger

log = get_logger(__name__)
_PIECE = 1 << 20


@dataclass(frozen=True)
class UnlockedModel:
    manifest: BundleManifest
    engine: Engine
    unlock_s: float
    load_s: float

    def identity(self) -> dict[str, str]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sha256": self.manifest.plaintext_sha256,
        }


async def _file_pieces(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while piece := await asyncio.to_thread(handle.read, _PIECE):
            yield piece
    finally:
        handle.close()


async def unseal_model(
    bundle: Path, keys: KeyService, recipient: Recipient
) -> tuple[BundleManifest, bytearray]:
    """The model's plaintext bytes, hash-checked against the manifest."""
    manifest = read_manifest(bundle)
    plaintext = bytearray()
    digest = hashlib.sha256()
    async for piece in unseal(
        _file_pieces(bundle / SEALED_NAME),
        keys,
        manifest.encryption_context,
        recipient=recipient,
    ):
        digest.update(piece)
        plaintext += piece
    if not hmac.compare_digest(digest.hexdigest(), manifest.plaintext_sha256):
        raise IntegrityError(
            f"The unsealed model hashes to {digest.hexdigest()[:16]}…, the manifest"
            f" says {manifest.plaintext_sha256[:16]}…; the bundle was altered.",
            reason=Reason.MODEL_UNAVAILABLE,
        )
    return manifest, plaintext


def _load_and_wipe(spec: ModelSpec, plaintext: bytearray) -> Engine:
    """Build the engine, then zero the weights' plaintext, in a worker thread.

    Copying and zeroing tens of megabytes on the event loop held it for over
    a tenth of a second while the worker was already answering status calls.
    """
    try:
        return Engine(spec, bytes(plaintext))
    finally:
        plaintext[:] = bytes(len(plaintext))


async def unlock_model(
    bundle: Path, keys: KeyService, recipient: Recipient
) -> UnlockedModel:
    started = time.perf_counter()
    manifest, plaintext = await unseal_model(bundle, keys, recipient)
    unsealed = time.perf_counter()
    spec = ModelSpec(
        architecture=manifest.architecture,
        input_spec=manifest.input_spec,
        labels=tuple(manifest.labels),
    )
    engine = await asyncio.to_thread(_load_and_wipe, spec, plaintext)
    del plaintext
    loaded = time.perf_counter()
    log.info(
        "model unlocked",
        model=manifest.name,
        version=manifest.version,
        unlock_s=round(unsealed - started, 3),
        load_s=round(loaded - unsealed, 3),
    )
    return UnlockedModel(manifest, engine, unsealed - started, loaded - unsealed)
