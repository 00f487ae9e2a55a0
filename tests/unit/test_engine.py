"""The model-agnostic engine: safetensors into registered architectures, TorchScript."""

from __future__ import annotations

import io
import os
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from services.enclave_worker.demo_weights import make_demo_weights
from services.enclave_worker.engine import Engine, ModelSpec, dump_weights
from shared.errors import CallerError, Reason

LABELS = ("benign", "malignant")


@pytest.fixture(scope="module")
def demo_weights() -> bytes:
    return make_demo_weights("nyu-image-only")


def _image(height: int = 150, width: int = 110, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(500, 20000, (height, width)).astype(np.uint16)
    image[:, width * 3 // 4 :] = 0
    return image


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = torch.sigmoid(x.abs().mean()).view(1, 1)
        return torch.cat([level, 1 - level], dim=1)


def _torchscript(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def test_engine_predicts_with_registered_architecture(demo_weights: bytes) -> None:
    spec = ModelSpec("nyu-image-only", {"L-MLO": [120, 90], "R-MLO": [120, 90]}, LABELS)
    engine = Engine(spec, demo_weights)

    result, timings = engine.predict_timed(_image(), "R-MLO")

    assert list(result) == list(LABELS)
    assert all(0.0 < p < 1.0 for p in result.values())
    assert timings.preprocess > 0 and timings.forward > 0
    assert engine.predict(_image(), "R-MLO") == result


def test_engine_unknown_architecture_is_refused() -> None:
    spec = ModelSpec("nyu-image-only-v9", {"L-CC": [64, 64]}, LABELS)

    with pytest.raises(
        CallerError, match="Unknown model architecture 'nyu-image-only-v9'"
    ):
        Engine(spec, b"")


def test_engine_view_outside_input_spec_is_refused(demo_weights: bytes) -> None:
    engine = Engine(
        ModelSpec("nyu-image-only", {"L-CC": [64, 64]}, LABELS), demo_weights
    )

    with pytest.raises(
        CallerError, match="does not accept view 'R-CC'; send one of: L-CC"
    ):
        engine.predict(_image(), "R-CC")


def test_engine_missing_and_misshapen_tensors_are_named(demo_weights: bytes) -> None:
    tensors = load(demo_weights)
    del tensors["heads.l_cc.out.bias"]
    tensors["columns.cc.stem.weight"] = torch.zeros(16, 1, 5, 5)
    tensors["columns.cc.extra"] = torch.zeros(1)
    spec = ModelSpec("nyu-image-only", {"L-CC": [64, 64]}, LABELS)

    with pytest.raises(CallerError) as caught:
        Engine(spec, save(tensors))

    message = str(caught.value)
    assert "missing heads.l_cc.out.bias" in message
    assert "unexpected columns.cc.extra" in message
    assert "wrong shape or dtype columns.cc.stem.weight" in message
    assert caught.value.reason is Reason.MODEL_UNAVAILABLE


def test_engine_garbage_weights_are_refused() -> None:
    spec = ModelSpec("nyu-single-view", {"L-CC": [64, 64]}, LABELS)

    with pytest.raises(CallerError, match="not valid safetensors"):
        Engine(spec, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")


def test_engine_pickle_is_never_accepted_as_weights() -> None:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buffer)
    spec = ModelSpec("nyu-single-view", {"L-CC": [64, 64]}, LABELS)

    with pytest.raises(CallerError, match="not valid safetensors"):
        Engine(spec, buffer.getvalue())


def test_engine_labels_must_match_architecture(demo_weights: bytes) -> None:
    spec = ModelSpec("nyu-image-only", {"L-CC": [64, 64]}, ("malignant", "benign"))

    with pytest.raises(CallerError, match="fix the manifest"):
        Engine(spec, demo_weights)


@pytest.mark.parametrize(
    ("input_spec", "message"),
    [({"LCC": [64, 64]}, "unknown view 'LCC'"), ({"L-CC": [64]}, "must be")],
)
def test_engine_bad_input_spec_is_refused(
    demo_weights: bytes, input_spec: dict[str, list[int]], message: str
) -> None:
    with pytest.raises(CallerError, match=message):
        Engine(ModelSpec("nyu-image-only", input_spec, LABELS), demo_weights)


def test_engine_runs_torchscript_archive() -> None:
    spec = ModelSpec("torchscript", {"L-CC": [64, 48]}, LABELS)
    engine = Engine(spec, _torchscript(_Mean()))

    result = engine.predict(_image(), "L-CC")

    assert result["benign"] == pytest.approx(1 - result["malignant"])
    assert 0.5 < result["benign"] < 1.0


def test_engine_torchscript_with_wrong_output_is_refused() -> None:
    spec = ModelSpec("torchscript", {"L-CC": [64, 48]}, ("a", "b", "c"))
    engine = Engine(spec, _torchscript(_Mean()))

    with pytest.raises(CallerError, match=r"returned \(1, 2\), expected .* \(1, 3\)"):
        engine.predict(_image(), "L-CC")


def test_engine_non_torchscript_bytes_are_refused() -> None:
    spec = ModelSpec("torchscript", {"L-CC": [64, 48]}, LABELS)

    with pytest.raises(CallerError, match="not a TorchScript archive"):
        Engine(spec, b"PK\x03\x04 not really a zip")


def test_engine_dump_weights_round_trips_through_safetensors() -> None:
    tensors = {"b": torch.arange(6, dtype=torch.int64).view(2, 3), "a": torch.ones(3)}

    data = dump_weights(tensors, {"z": "1", "y": "2"})

    loaded = load(data)
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(
        loaded["a"], tensors["a"]
    )
    assert data == dump_weights(dict(reversed(tensors.items())), {"y": "2", "z": "1"})


def test_engine_full_cc_size_forward(demo_weights: bytes) -> None:
    spec = ModelSpec("nyu-image-only", {"L-CC": [2677, 1942]}, LABELS)
    engine = Engine(spec, demo_weights)
    image = _image(3328, 2560)

    engine.predict(image, "L-CC")
    started = time.perf_counter()
    result, timings = engine.predict_timed(image, "L-CC")
    total = time.perf_counter() - started

    print(
        f"torch threads {torch.get_num_threads()} of {os.cpu_count()} cpus: "
        f"preprocess {timings.preprocess * 1000:.0f} ms, "
        f"forward {timings.forward * 1000:.0f} ms, total {total * 1000:.0f} ms"
    )
    assert set(result) == set(LABELS)
    assert timings.forward < 30.0
