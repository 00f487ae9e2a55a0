"""The model-agnostic inference engine of the enclave worker.

A model bundle's manifest names an architecture, the input size of each view it
accepts and its output labels (``ModelSpec``). The weights arrive as bytes, never
as a file, in one of two forms, and neither is ever unpickled:

* safetensors for an architecture in the registry (``models``): the module is
  built by our code and the tensors are checked name by name and shape by shape;
* a TorchScript archive when the architecture is ``"torchscript"``; its module is
  called as ``forward(x)`` and must return probabilities of shape (1, labels).

``Engine.predict`` is synchronous and CPU-bound: callers run it in a thread. The
caller sets torch's thread count before torch starts; this module never does.
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from services.enclave_worker.models import get_architecture
from services.enclave_worker.models.nyu import VIEWS
from services.enclave_worker.preprocess import preprocess
from shared.errors import CallerError, InternalError, Reason
from shared.logging import get_logger

TORCHSCRIPT = "torchscript"
DEMO_MARK = "untrained-demo"

_log = get_logger(__name__)

_DTYPE_CODES: Mapping[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model bundle's manifest says about the model inside it."""

    architecture: str
    input_spec: Mapping[str, Sequence[int]]
    """View name -> [height, width] of the input window for that view."""
    labels: tuple[str, ...]


@dataclass(frozen=True)
class StageTimings:
    """Seconds spent in each stage of one prediction."""

    preprocess: float
    forward: float


class Engine:
    """A loaded model, ready to turn one decoded image into label probabilities."""

    def __init__(self, spec: ModelSpec, weights: bytes) -> None:
        self.spec = spec
        self._sizes = _input_sizes(spec)
        if spec.architecture == TORCHSCRIPT:
            self._module = _load_torchscript(weights)
            self._view_conditioned = False
        else:
            self._module, self._view_conditioned = _load_registered(spec, weights)
        self._module.eval()
        for parameter in self._module.parameters():
            parameter.requires_grad_(False)

    def predict(self, pixels: np.ndarray, view: str) -> dict[str, float]:
        """Probabilities per label for a decoded (H, W) uint16 image of ``view``."""
        return self.predict_timed(pixels, view)[0]

    def predict_timed(
        self, pixels: np.ndarray, view: str
    ) -> tuple[dict[str, float], StageTimings]:
        """Like ``predict``, also returning how long each stage took."""
        size = self._sizes.get(view)
        if size is None:
            accepted = ", ".join(self._sizes)
            raise CallerError(
                f"The model does not accept view {view!r}; send one of: {accepted}."
            )
        started = time.perf_counter()
        x = preprocess(pixels, view, size)
        prepared = time.perf_counter()
        with torch.inference_mode():
            out = self._module(x, view) if self._view_conditioned else self._module(x)
        finished = time.perf_counter()
        timings = StageTimings(prepared - started, finished - prepared)
        return self._to_labels(out), timings

    def _to_labels(self, out: Any) -> dict[str, float]:
        expected = (1, len(self.spec.labels))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
            raise CallerError(
                f"The model returned {shape}, expected a tensor of shape {expected}; "
                "fix the model bundle.",
                reason=Reason.MODEL_UNAVAILABLE,
            )
        values = [float(v) for v in out[0].tolist()]
        if not all(math.isfinite(v) for v in values):
            raise InternalError("The model returned a non-finite probability.")
        return dict(zip(self.spec.labels, values, strict=True))


def dump_weights(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> bytes:
    """Serialise tensors as safetensors with a byte-for-byte stable layout.

    The library's own writer orders metadata keys differently from run to run,
    which would change the model hash; here keys are sorted and the data follows
    the sorted names.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def read_weights_metadata(weights: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, without reading any tensor."""
    try:
        (length,) = struct.unpack_from("<Q", weights)
        header = json.loads(weights[8 : 8 + length])
        metadata = header.get("__metadata__", {})
    except (struct.error, ValueError, AttributeError) as exc:
        raise CallerError(
            "The weights are not in safetensors format; seal a .safetensors file.",
            reason=Reason.MODEL_UNAVAILABLE,
        ) from exc
    return {str(k): str(v) for k, v in metadata.items()}


def _input_sizes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    sizes: dict[str, tuple[int, int]] = {}
    for view, size in spec.input_spec.items():
        if view not in VIEWS:
            raise CallerError(
                f"The input spec names unknown view {view!r}; use {', '.join(VIEWS)}."
            )
        if len(size) != 2 or not all(isinstance(n, int) and n > 0 for n in size):
            raise CallerError(
                f"The input size {list(size)!r} of view {view} must be "
                "[height, width] in positive pixels."
            )
        sizes[view] = (size[0], size[1])
    if not sizes or not spec.labels:
        raise CallerError("The model spec must name at least one view and one label.")
    return sizes


def _load_registered(spec: ModelSpec, weights: bytes) -> tuple[nn.Module, bool]:
    architecture = get_architecture(spec.architecture)
    if spec.labels != architecture.labels:
        raise CallerError(
            f"Architecture {architecture.name} outputs {architecture.labels}, "
            f"but the bundle names labels {spec.labels}; fix the manifest."
        )
    tensors = _read_safetensors(weights)
    module = architecture.build()
    _check_tensors(module.state_dict(), tensors)
    module.load_state_dict(tensors, strict=True)
    # Channels-last convolutions run about twice as fast on CPU; a one-channel
    # input needs no conversion for it.
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if read_weights_metadata(weights).get("obscura.weights") == DEMO_MARK:
        _log.warning("untrained_demo_weights_loaded", architecture=architecture.name)
    return module, architecture.view_conditioned


def _read_safetensors(weights: bytes) -> dict[str, torch.Tensor]:
    try:
        tensors: dict[str, torch.Tensor] = load_safetensors(weights)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CallerError(
            f"The weights ({len(weights)} bytes) are not valid safetensors: {exc}; "
            "seal a .safetensors file.",
            reason=Reason.MODEL_UNAVAILABLE,
        ) from exc
    return tensors


def _check_tensors(
    expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(
        name
        for name in set(expected) & set(actual)
        if expected[name].shape != actual[name].shape
        or expected[name].dtype != actual[name].dtype
    )
    if missing or extra or wrong:
        raise CallerError(
            "The weights do not fit the architecture: "
            f"missing {_few(missing)}, unexpected {_few(extra)}, "
            f"wrong shape or dtype {_few(wrong)}; convert them for this architecture.",
            reason=Reason.MODEL_UNAVAILABLE,
        )


def _load_torchscript(weights: bytes) -> nn.Module:
    # torch.jit is deprecated in favour of torch.export; vendors still ship
    # TorchScript, so the warning is silenced here until bundles move to .pt2.
    # catch_warnings is process-wide: this runs once at boot, before any job.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.*", category=DeprecationWarning
            )
            module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                io.BytesIO(weights), map_location="cpu"
            )
    except RuntimeError as exc:
        raise CallerError(
            f"The weights ({len(weights)} bytes) are not a TorchScript archive: "
            f"{str(exc).splitlines()[0]}; export the model with torch.jit.save.",
            reason=Reason.MODEL_UNAVAILABLE,
        ) from exc
    return module


def _few(names: Sequence[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
