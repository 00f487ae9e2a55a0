"""Untrained demo weights: stable bytes, labelled, and sensitive to the image."""

from __future__ import annotations

import numpy as np
import pytest

from services.enclave_worker.demo_weights import make_demo_weights
from services.enclave_worker.engine import Engine, ModelSpec, read_weights_metadata
from shared.errors import CallerError

LABELS = ("benign", "malignant")


def _tissue(seed: int, height: int = 160, width: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    inside = (rows - height / 2) ** 2 + cols**2 < (0.45 * height) ** 2
    texture = rng.integers(1000, 30000, (height, width))
    return np.where(inside, texture, 0).astype(np.uint16)


def test_nyu_demo_weights_bytes_are_deterministic() -> None:
    first = make_demo_weights("nyu-single-view", seed=5)

    assert first == make_demo_weights("nyu-single-view", seed=5)
    assert first != make_demo_weights("nyu-single-view", seed=6)


def test_nyu_demo_weights_are_labelled_untrained() -> None:
    metadata = read_weights_metadata(make_demo_weights("nyu-image-only"))

    assert metadata["obscura.weights"] == "untrained-demo"
    assert "UNTRAINED" in metadata["obscura.warning"]
    assert metadata["obscura.architecture"] == "nyu-image-only"


def test_nyu_demo_weights_different_images_give_different_predictions() -> None:
    spec = ModelSpec("nyu-image-only", {"L-CC": [128, 96]}, LABELS)
    engine = Engine(spec, make_demo_weights("nyu-image-only"))

    first = engine.predict(_tissue(1), "L-CC")
    second = engine.predict(_tissue(2), "L-CC")

    assert all(0.01 < p < 0.99 for p in [*first.values(), *second.values()])
    assert max(abs(first[k] - second[k]) for k in LABELS) > 1e-3


def test_nyu_demo_weights_unknown_architecture_is_refused() -> None:
    with pytest.raises(CallerError, match="Unknown model architecture 'resnet-50'"):
        make_demo_weights("resnet-50")
