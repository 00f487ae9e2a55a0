"""Sealed model bundles: a manifest plus the model sealed under the vendor key.

A bundle is a directory::

    manifest.json   architecture, input spec, labels, hashes, key id, context
    model.sealed    the weights in the envelope format of ``shared.envelope``

The encryption context carries the plaintext SHA-256, so a manifest edited to name
other weights no longer matches the key KMS releases, and the enclave checks the
hash again after unsealing.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.envelope import seal
from shared.errors import CallerError, IntegrityError
from shared.keys import KeyService

BUNDLE_FORMAT = "obscura-model-bundle/1"
MANIFEST_NAME = "manifest.json"
SEALED_NAME = "model.sealed"
WeightsFormat = Literal["safetensors", "torchscript"]
_READ_PIECE = 1 << 20


class BundleManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["obscura-model-bundle/1"] = "obscura-model-bundle/1"
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    architecture: str = Field(min_length=1, max_length=128)
    weights_format: WeightsFormat
    input_spec: dict[str, Any]
    labels: list[str] = Field(min_length=1)
    plaintext_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plaintext_size: int = Field(ge=0)
    sealed_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sealed_size: int = Field(ge=0)
    key_id: str
    encryption_context: dict[str, str]
    created_at: datetime

    def canonical_bytes(self) -> bytes:
        """The manifest as measured into PCR0 when a bundle is baked into an image."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


def model_context(name: str, version: str, plaintext_sha256: str) -> dict[str, str]:
    return {
        "purpose": "model",
        "model": name,
        "version": version,
        "sha256": plaintext_sha256,
    }


def detect_weights_format(path: Path) -> WeightsFormat:
    """Decide by content: safetensors header, or a TorchScript archive with code/."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < 100 * 1024 * 1024:
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name or name.startswith("code/") for name in names):
            return "torchscript"
        raise CallerError(
            f"{path} is a torch.save archive (pickle), which the enclave never loads;"
            " export safetensors (obscura model import-nyu does for NYU weights)."
        )
    raise CallerError(
        f"{path} is neither a safetensors file nor a TorchScript archive;"
        " seal one of those."
    )


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while piece := handle.read(_READ_PIECE):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


async def _file_pieces(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(_READ_PIECE):
            yield piece


async def seal_model(
    weights: Path,
    out: Path,
    *,
    keys: KeyService,
    key_id: str,
    name: str,
    version: str,
    architecture: str,
    input_spec: Mapping[str, Any],
    labels: list[str],
) -> BundleManifest:
    """Seal ``weights`` under the vendor key into the bundle directory ``out``."""
    weights_format = detect_weights_format(weights)
    plaintext_sha256, plaintext_size = _sha256_file(weights)
    context = model_context(name, version, plaintext_sha256)
    out.mkdir(parents=True, exist_ok=True)
    sealed_path = out / SEALED_NAME
    sealed_digest = hashlib.sha256()
    sealed_size = 0
    with sealed_path.open("wb") as sink:
        async for piece in seal(_file_pieces(weights), keys, key_id, context):
            sealed_digest.update(piece)
            sealed_size += len(piece)
            sink.write(piece)
    manifest = BundleManifest(
        name=name,
        version=version,
        architecture=architecture,
        weights_format=weights_format,
        input_spec=dict(input_spec),
        labels=list(labels),
        plaintext_sha256=plaintext_sha256,
        plaintext_size=plaintext_size,
        sealed_sha256=sealed_digest.hexdigest(),
        sealed_size=sealed_size,
        key_id=key_id,
        encryption_context=context,
        created_at=datetime.now(UTC),
    )
    (out / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(bundle: Path) -> BundleManifest:
    path = bundle / MANIFEST_NAME
    try:
        return BundleManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise CallerError(
            f"No {MANIFEST_NAME} in {bundle}; point at a directory made by"
            " obscura model seal."
        ) from exc
    except ValidationError as exc:
        raise IntegrityError(f"The manifest in {bundle} is not valid: {exc}") from exc
