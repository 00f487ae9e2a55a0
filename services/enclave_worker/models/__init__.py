"""Registry of the architectures the enclave worker can build from safetensors.

A sealed model bundle names its architecture; only names listed here can be
loaded from plain weights, so a bundle never brings code of its own unless it is
a TorchScript archive (see ``engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from services.enclave_worker.models import nyu
from shared.errors import CallerError


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and what it expects and returns.

    ``view_conditioned`` modules take ``forward(x, view)``; the others ``forward(x)``.
    Both return probabilities of shape (N, len(labels)).
    """

    name: str
    build: Callable[[], nn.Module]
    input_spec: Mapping[str, tuple[int, int]]
    labels: tuple[str, ...]
    view_conditioned: bool


NYU_IMAGE_ONLY = "nyu-image-only"
NYU_SINGLE_VIEW = "nyu-single-view"

ARCHITECTURES: Mapping[str, Architecture] = {
    NYU_IMAGE_ONLY: Architecture(
        name=NYU_IMAGE_ONLY,
        build=nyu.NyuImageOnly,
        input_spec=nyu.INPUT_SIZES,
        labels=nyu.LABELS,
        view_conditioned=True,
    ),
    NYU_SINGLE_VIEW: Architecture(
        name=NYU_SINGLE_VIEW,
        build=nyu.NyuSingleView,
        input_spec=nyu.INPUT_SIZES,
        labels=nyu.LABELS,
        view_conditioned=False,
    ),
}


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name; unknown names are the caller's mistake."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CallerError(
            f"Unknown model architecture {name!r}; use one of: {known}."
        ) from None
