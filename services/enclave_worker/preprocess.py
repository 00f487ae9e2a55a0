"""Mammogram preprocessing for the NYU classifier: crop, flip, centre, standardise.

The steps follow the published pipeline in simple form:

1. Right-side views are flipped horizontally, so every breast has its chest wall
   on the left and points right, as the model was trained.
2. The breast is the largest connected region of non-zero pixels after an
   erosion that cuts off thin lines and burnt-in markers. The search runs on a
   coarse grid of sampled pixels, so it costs about the same on any image size.
3. A window of the view's input size is placed at native resolution (no resize):
   against the chest wall, or against the nipple side when the breast is wider
   than the window; vertically centred on the breast, or on its centre of mass
   when taller. Pixels outside the breast's bounding box and outside the image
   are zero, like the published crop-and-pad.
4. The window is standardised on its own: (x - mean) / std, float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from services.enclave_worker.models.nyu import INPUT_SIZES, VIEWS
from shared.errors import CallerError, UnsupportedImageError

GRID_CELLS = 256
"""Cells along the long side of the coarse grid the breast is searched on."""
EROSION_FRACTION = 0.03
"""Erosion radius as a fraction of the long side (the published 100 px of ~3300)."""
BUFFER_FRACTION = 0.015
"""Margin kept around the breast box (the published 50 px of ~3300)."""
COARSE_FACTOR = 4
"""Fine cells per coarse cell along each side, for region labelling."""


@dataclass(frozen=True)
class BreastRegion:
    """The breast's bounding box (end exclusive) and centre-of-mass row, in pixels."""

    top: int
    bottom: int
    left: int
    right: int
    centre_row: int


def preprocess(
    pixels: np.ndarray, view: str, input_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Turn a decoded (H, W) uint16 mammogram into a (1, 1, h, w) float32 input."""
    _check_pixels(pixels)
    height, width = _input_size(view, input_size)
    oriented = pixels[:, ::-1] if view.startswith("R-") else pixels
    region = find_breast(oriented)
    window = _place_window(region, height, width)
    out = torch.zeros((height, width), dtype=torch.float32)
    _copy_breast(oriented, region, window, out.numpy())
    _standardise(out)
    return out.view(1, 1, height, width)


def find_breast(pixels: np.ndarray) -> BreastRegion:
    """Locate the largest connected non-zero region of an oriented image."""
    step = max(1, math.ceil(max(pixels.shape) / GRID_CELLS))
    sampled = pixels[step // 2 :: step, step // 2 :: step] > 0
    fine = torch.from_numpy(np.ascontiguousarray(sampled))
    if not bool(fine.any()):
        raise UnsupportedImageError(
            "The image has no non-zero pixels, so no breast was found; "
            "send a mammogram with the background at zero."
        )
    # Regions are labelled on a coarser grid (a cell is on if any sample is), which
    # keeps label propagation short; the fine grid then gives the exact extent.
    coarse = _dilate(fine, 0, COARSE_FACTOR)
    radius = max(1, round(EROSION_FRACTION * max(coarse.shape)))
    eroded = _erode(coarse, radius)
    seeds = eroded if bool(eroded.any()) else coarse
    largest = _dilate(_largest_component(seeds), radius)
    upsampled = largest.repeat_interleave(COARSE_FACTOR, 0)
    upsampled = upsampled.repeat_interleave(COARSE_FACTOR, 1)
    breast = upsampled[: fine.shape[0], : fine.shape[1]] & fine
    return _region_from_mask(breast, step, pixels.shape)


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise UnsupportedImageError(
            f"Expected a 2-D uint16 pixel array, got shape {pixels.shape} "
            f"and dtype {pixels.dtype}; decode the image to 16-bit greyscale first."
        )
    if min(pixels.shape) < 8:
        raise UnsupportedImageError(
            f"The image of shape {pixels.shape} is too small to be a mammogram."
        )


def _input_size(view: str, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if view not in VIEWS:
        raise CallerError(f"Unknown view {view!r}; use one of {', '.join(VIEWS)}.")
    height, width = input_size or INPUT_SIZES[view]
    if height < 1 or width < 1:
        raise CallerError(f"Input size {(height, width)} must be positive.")
    return height, width


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return ~_dilate(~mask, radius)


def _dilate(mask: torch.Tensor, radius: int, stride: int = 1) -> torch.Tensor:
    """Grow a mask by a square of ``radius``; with ``stride`` also shrink the grid."""
    size = 2 * radius + stride
    grown = F.max_pool2d(
        mask[None, None].float(), size, stride, padding=radius, ceil_mode=True
    )
    return grown[0, 0] > 0


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Label 8-connected regions by spreading the largest cell id, keep the biggest."""
    ids = torch.arange(1, mask.numel() + 1, dtype=torch.float32).view(mask.shape)
    on = mask.float()
    labels = (ids * on)[None, None]
    # A path through every cell bounds the number of steps; compact regions on the
    # coarse grid converge after a few dozen.
    for _ in range(0, mask.numel(), 8):
        previous = labels
        for _ in range(8):
            labels = F.max_pool2d(labels, 3, stride=1, padding=1) * on
        if torch.equal(labels, previous):
            break
    flat = labels.view(-1).long()
    counts = torch.bincount(flat[flat > 0])
    return (labels[0, 0] == float(int(counts.argmax()))) & mask


def _region_from_mask(
    mask: torch.Tensor, step: int, shape: tuple[int, ...]
) -> BreastRegion:
    rows = torch.nonzero(mask.any(dim=1)).view(-1)
    cols = torch.nonzero(mask.any(dim=0)).view(-1)
    weights = mask.sum(dim=1).double()
    centre = float((weights * torch.arange(len(weights))).sum() / weights.sum())
    buffer = round(BUFFER_FRACTION * max(shape))
    height, width = shape
    return BreastRegion(
        top=max(0, int(rows[0]) * step - buffer),
        bottom=min(height, (int(rows[-1]) + 1) * step + buffer),
        # The chest wall is at column 0 of an oriented image: no margin there.
        left=max(0, int(cols[0]) * step),
        right=min(width, (int(cols[-1]) + 1) * step + buffer),
        centre_row=min(height - 1, round(centre * step + step // 2)),
    )


def _place_window(region: BreastRegion, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of the input window, in image pixels (may lie outside)."""
    box_width = region.right - region.left
    left = region.left if box_width <= width else region.right - width
    box_height = region.bottom - region.top
    if box_height <= height:
        top = region.top - (height - box_height) // 2
    else:
        wanted = region.centre_row - height // 2
        top = min(max(wanted, region.top), region.bottom - height)
    return top, left


def _copy_breast(
    pixels: np.ndarray,
    region: BreastRegion,
    window: tuple[int, int],
    out: np.ndarray,
) -> None:
    top, left = window
    height, width = out.shape
    y0, y1 = max(top, region.top), min(top + height, region.bottom)
    x0, x1 = max(left, region.left), min(left + width, region.right)
    if y0 >= y1 or x0 >= x1:
        return
    # One pass: the uint16 slice is converted to float32 straight into the window.
    np.copyto(
        out[y0 - top : y1 - top, x0 - left : x1 - left],
        pixels[y0:y1, x0:x1],
        casting="unsafe",
    )


def _standardise(window: torch.Tensor) -> None:
    std, mean = torch.std_mean(window, correction=0)
    window.sub_(mean).div_(torch.clamp(std, min=1e-6))
