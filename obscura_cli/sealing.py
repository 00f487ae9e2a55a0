"""``obscura model seal``: the vendor's side of the model's journey."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from obscura_cli.settings import CliSettings
from shared.bundle import BundleManifest, seal_model
from shared.errors import CallerError
from shared.kms import AwsKeyService


def architecture_defaults(architecture: str) -> tuple[dict[str, Any], list[str]] | None:
    """Input spec and labels of an architecture the enclave engine knows, if any."""
    from services.enclave_worker.models import ARCHITECTURES

    known = ARCHITECTURES.get(architecture)
    if known is None:
        return None
    spec = {view: list(size) for view, size in known.input_spec.items()}
    return spec, list(known.labels)


async def seal_model_command(
    settings: CliSettings,
    *,
    weights: Path,
    out: Path,
    architecture: str,
    name: str,
    version: str,
    labels: str | None,
    input_spec: str | None,
    key_id: str | None,
) -> BundleManifest:
    if not key_id:
        raise CallerError("No vendor key: pass --key-id or set OBSCURA_VENDOR_KEY_ID.")
    defaults = architecture_defaults(architecture)
    if defaults is None and (labels is None or input_spec is None):
        raise CallerError(
            f"Architecture {architecture!r} is not built into the engine; give"
            " --labels and --input-spec for a TorchScript model."
        )
    spec = json.loads(input_spec) if input_spec else defaults[0] if defaults else {}
    names = labels.split(",") if labels else defaults[1] if defaults else []
    async with AwsKeyService.connect(
        settings.kms_endpoint(), settings.credentials()
    ) as keys:
        return await seal_model(
            weights,
            out,
            keys=keys,
            key_id=key_id,
            name=name,
            version=version,
            architecture=architecture,
            input_spec=spec,
            labels=names,
        )
