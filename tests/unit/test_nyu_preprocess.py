"""Mammogram preprocessing: orientation, breast crop, window, standardisation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.enclave_worker.preprocess import find_breast, preprocess
from shared.errors import CallerError, UnsupportedImageError

MAMMOGRAMS = Path(__file__).resolve().parents[3] / "shared" / "data" / "mammograms"


def _breast(
    height: int = 300, width: int = 240, *, right_side: bool = False
) -> np.ndarray:
    """A half-disc of tissue against the chest wall, plus a far burnt-in marker."""
    rows, cols = np.mgrid[0:height, 0:width]
    radius = 0.4 * height
    tissue = (rows - height / 2) ** 2 + cols**2 < radius**2
    image = np.where(tissue, 2000 + (rows * 7 + cols * 3) % 900, 0).astype(np.uint16)
    image[10:16, width - 30 : width - 20] = 60000
    return image[:, ::-1].copy() if right_side else image


def test_nyu_preprocess_output_is_standardised_float32() -> None:
    x = preprocess(_breast(), "L-CC", (256, 200))

    assert x.shape == (1, 1, 256, 200)
    assert x.dtype.is_floating_point and x.element_size() == 4
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std(correction=0)) - 1.0) < 1e-4


def test_nyu_preprocess_right_view_is_flipped_like_mirrored_left_view() -> None:
    left = _breast()

    from_left = preprocess(left, "L-MLO", (250, 180))
    from_right = preprocess(left[:, ::-1].copy(), "R-MLO", (250, 180))

    assert np.array_equal(from_left.numpy(), from_right.numpy())


def test_nyu_preprocess_chest_wall_ends_up_on_the_left() -> None:
    x = preprocess(_breast(right_side=True), "R-CC", (256, 200))[0, 0]

    background = float(x.min())
    assert float(x[128, 0]) > background  # tissue against the left edge
    assert float(x[128, -1]) == background  # padding at the right


def test_nyu_preprocess_drops_marker_outside_largest_region() -> None:
    image = _breast()

    region = find_breast(image)

    assert region.left == 0
    assert region.right < image.shape[1] - 30  # the marker's columns are cut off
    assert region.top > 0 and region.bottom < image.shape[0]


def test_nyu_preprocess_small_window_follows_centre_of_mass() -> None:
    image = _breast(400, 200)
    image[:, :] = 0
    image[250:390, :120] = 3000  # tissue low in the frame

    x = preprocess(image, "L-CC", (100, 200))[0, 0]

    assert float(x[:, :100].min()) == float(x[:, :100].max())  # all tissue, no edge
    assert float(x[:, 150:].max()) < float(x[:, :100].min())  # padding beyond 120


def test_nyu_preprocess_is_deterministic() -> None:
    image = _breast()

    assert np.array_equal(
        preprocess(image, "R-CC", (200, 160)).numpy(),
        preprocess(image, "R-CC", (200, 160)).numpy(),
    )


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((64, 64), np.uint8), np.zeros((4, 64, 64), np.uint16)],
    ids=["uint8", "3d"],
)
def test_nyu_preprocess_wrong_array_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError, match="Expected a 2-D uint16"):
        preprocess(pixels, "L-CC")


def test_nyu_preprocess_blank_image_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="no non-zero pixels"):
        preprocess(np.zeros((64, 64), np.uint16), "L-CC")


def test_nyu_preprocess_unknown_view_is_refused() -> None:
    with pytest.raises(CallerError, match="Unknown view 'CC'"):
        preprocess(_breast(), "CC")


@pytest.mark.skipif(not MAMMOGRAMS.is_dir(), reason="shared mammograms not present")
def test_nyu_preprocess_real_cc_is_fast_and_centred() -> None:
    pixels = np.array(Image.open(MAMMOGRAMS / "1_L_CC.png"))
    assert pixels.dtype == np.uint16 and pixels.shape == (3328, 2560)

    durations = []
    for _ in range(5):
        started = time.perf_counter()
        x = preprocess(pixels, "L-CC")
        durations.append(time.perf_counter() - started)

    print(f"preprocess 1_L_CC -> {tuple(x.shape)}: {min(durations) * 1000:.1f} ms")
    assert x.shape == (1, 1, 2677, 1942)
    assert min(durations) < 0.25
    column_has_tissue = (x[0, 0] > x.min()).any(dim=0)
    assert bool(column_has_tissue[0]) and not bool(column_has_tissue[-1])
