"""A synthetic 16-bit mammography phantom for demos and benchmarks.

Not a medical image: a half-ellipse of "tissue" against the chest wall with a
smooth density falloff, fine texture and a few bright calcification-like specks,
at the sample mammograms' size (3328 rows x 2560 columns). Deterministic for a
seed; right-side views are mirrored, as a detector would show them.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

ROWS, COLUMNS = 3328, 2560


def phantom_pixels(
    view: str = "L-CC", *, seed: int = 0, rows: int = ROWS, columns: int = COLUMNS
) -> npt.NDArray[np.uint16]:
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]
    reach = 0.78 if view.endswith("CC") else 0.9
    radius = np.sqrt((x / reach) ** 2 + (y / 0.82) ** 2)
    tissue = np.clip(1.0 - radius, 0.0, None) ** 0.35
    texture = rng.normal(0.0, 0.06, size=(rows // 8, columns // 8)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8), dtype=np.float32))[:rows, :columns]
    image = np.where(radius < 1.0, 0.25 + 0.7 * tissue + texture * tissue, 0.0)
    for _ in range(12):
        cy, cx = rng.integers(rows // 4, 3 * rows // 4), rng.integers(40, columns // 2)
        image[cy - 3 : cy + 3, cx - 3 : cx + 3] = 0.98
    pixels = (np.clip(image, 0.0, 1.0) * 62000).astype(np.uint16)
    if view.startswith("R"):
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels


def phantom_png(view: str = "L-CC", *, seed: int = 0) -> bytes:
    """The phantom as a 16-bit grayscale PNG."""
    pixels = phantom_pixels(view, seed=seed)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
