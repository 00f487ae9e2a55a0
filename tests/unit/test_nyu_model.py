"""The NYU ResNet-22 architecture: shapes, sharing between sides, outputs."""

from __future__ import annotations

import torch

from services.enclave_worker.models import get_architecture
from services.enclave_worker.models.nyu import NyuImageOnly, NyuSingleView, ViewHead


def test_nyu_model_column_matches_published_size() -> None:
    column = NyuSingleView().column
    convs = [m for m in column.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in column.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    # stem + 10 blocks x 2 convs + 5 projections; 10 blocks x 2 BNs + final BN
    assert (len(convs), len(bns)) == (26, 21)
    assert convs[0].weight.shape == (16, 1, 7, 7)
    assert bns[-1].num_features == 256


def test_nyu_model_accepts_any_size_and_returns_probabilities() -> None:
    model = NyuSingleView().eval()

    with torch.inference_mode():
        out = model(torch.randn(2, 1, 97, 71))

    assert out.shape == (2, 2)
    assert bool(((out > 0) & (out < 1)).all())


def test_nyu_model_sides_share_a_column_but_not_a_head() -> None:
    model = NyuImageOnly().eval()
    head = model.heads["r_cc"]
    assert isinstance(head, ViewHead)
    x = torch.randn(1, 1, 80, 64)

    with torch.inference_mode():
        left, right = model(x, "L-CC"), model(x, "R-CC")
        torch.nn.init.zeros_(head.out.weight)
        flat = model(x, "R-CC")

    assert not torch.equal(left, right)
    bias = head.out.bias
    assert torch.allclose(flat, torch.sigmoid(bias[1::2] - bias[0::2]))


def test_nyu_model_registry_builds_view_conditioned_model() -> None:
    architecture = get_architecture("nyu-image-only")

    assert architecture.view_conditioned
    assert isinstance(architecture.build(), NyuImageOnly)
    assert architecture.input_spec["R-MLO"] == (2974, 1748)
