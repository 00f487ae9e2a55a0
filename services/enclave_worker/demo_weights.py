"""UNTRAINED demo weights for the registered architectures: for demos and tests only.

These weights have never seen a mammogram. Their predictions are meaningless and
must never reach a clinician; the safetensors metadata says so in
``obscura.weights`` and ``obscura.warning``. They exist so the whole mesh can run
end to end on machines that do not hold the vendor's trained model.

They are random but not arbitrary: convolutions use He initialisation and each
batch norm's running statistics are set to the variance its input is expected to
have, so activations stay near unit scale through the network and different
images give visibly different outputs. Everything is computed from a seeded
generator without running the network, so the bytes are the same on every machine
and thread count.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from services.enclave_worker.engine import DEMO_MARK, dump_weights
from services.enclave_worker.models import get_architecture
from services.enclave_worker.models.nyu import PreActBlock, ResNet22Column, ViewHead

HEAD_GAIN = 4.0
"""Scales the output layer so demo probabilities spread instead of sitting at 0.5."""
POOLED_MEAN = 1.5
POOLED_VARIANCE = 0.4


def make_demo_weights(arch: str, seed: int = 0) -> bytes:
    """Seeded UNTRAINED weights for ``arch`` as safetensors bytes, labelled as such."""
    architecture = get_architecture(arch)
    model = architecture.build()
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, ResNet22Column):
            _init_column(module, generator)
        elif isinstance(module, ViewHead):
            _init_head(module, generator)
    metadata = {
        "obscura.weights": DEMO_MARK,
        "obscura.warning": "UNTRAINED demo weights; predictions are meaningless.",
        "obscura.architecture": arch,
        "obscura.seed": str(seed),
    }
    return dump_weights(model.state_dict(), metadata)


def _init_column(column: ResNet22Column, generator: torch.Generator) -> None:
    # The stem sees standardised pixels (unit variance, no ReLU): gain 1. Its max
    # pool then keeps the largest of 9 roughly normal values: mean 1.5, variance 0.4.
    _normal_conv(column.stem, generator, gain=1.0)
    mean, variance = POOLED_MEAN, POOLED_VARIANCE
    blocks = [m for m in column.modules() if isinstance(m, PreActBlock)]
    for block in blocks:
        _set_stats(block.bn1, mean, variance)
        _he_conv(block.conv1, generator)
        _set_stats(block.bn2, 0.0, 1.0)
        _he_conv(block.conv2, generator)
        if block.shortcut is not None:
            _he_conv(block.shortcut, generator)
            variance = 2.0
        else:
            variance += 1.0
        mean = 0.0
    _set_stats(column.final_bn, 0.0, variance)


def _init_head(head: ViewHead, generator: torch.Generator) -> None:
    for layer, gain in ((head.hidden, 2.0), (head.out, HEAD_GAIN)):
        std = math.sqrt(gain / layer.in_features)
        with torch.no_grad():
            layer.weight.copy_(_randn(layer.weight.shape, generator) * std)
            layer.bias.zero_()


def _he_conv(conv: nn.Conv2d, generator: torch.Generator) -> None:
    _normal_conv(conv, generator, gain=2.0)


def _normal_conv(conv: nn.Conv2d, generator: torch.Generator, gain: float) -> None:
    fan_in = conv.weight[0].numel()
    with torch.no_grad():
        conv.weight.copy_(
            _randn(conv.weight.shape, generator) * math.sqrt(gain / fan_in)
        )


def _set_stats(bn: nn.BatchNorm2d, mean: float, variance: float) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.fill_(mean)
        bn.running_var.fill_(variance)


def _randn(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)
