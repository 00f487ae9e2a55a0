"""The NYU breast-cancer classifier (Wu et al., IEEE TMI 2020), image-only variant.

Each view angle (CC, MLO) has its own pre-activation ResNet-22 column; each of the
four views has its own head. Left and right views of one angle share the column.
A head turns the column's globally pooled features into two binary softmaxes and
we keep their positive halves: the probabilities of a benign and of a malignant
finding in the imaged breast. Any input size works; the trained sizes are in
``INPUT_SIZES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VIEWS: tuple[str, ...] = ("L-CC", "R-CC", "L-MLO", "R-MLO")
LABELS: tuple[str, ...] = ("benign", "malignant")
INPUT_SIZES: dict[str, tuple[int, int]] = {
    "L-CC": (2677, 1942),
    "R-CC": (2677, 1942),
    "L-MLO": (2974, 1748),
    "R-MLO": (2974, 1748),
}
"""Height x width of the window each view was trained on."""

STEM_FILTERS = 16
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 2)
BLOCKS_PER_STAGE = 2
FEATURES = STEM_FILTERS * 2 ** (len(STAGE_STRIDES) - 1)


def view_angle(view: str) -> str:
    """``"L-MLO"`` -> ``"mlo"``: the column a view runs through."""
    return view.split("-")[1].lower()


def view_key(view: str) -> str:
    """``"L-MLO"`` -> ``"l_mlo"``: the head a view runs through."""
    return view.lower().replace("-", "_")


class PreActBlock(nn.Module):
    """A basic residual block with batch norm and ReLU before each convolution.

    The first block of a stage always has a 1x1 projection on its shortcut, fed
    from the pre-activated input, even when stride and width do not change.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, project: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False) if project else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h)))
        out: Tensor = h + residual
        return out


class ResNet22Column(nn.Module):
    """Single-channel stem (7x7/2 conv, 3x3/2 max pool), five stages, final BN+ReLU."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, STEM_FILTERS, 7, 2, bias=False)
        self.pool = nn.MaxPool2d(3, 2)
        self.stages = nn.ModuleList()
        in_planes = STEM_FILTERS
        for index, stride in enumerate(STAGE_STRIDES):
            planes = STEM_FILTERS * 2**index
            blocks = [PreActBlock(in_planes, planes, stride, project=True)]
            blocks += [
                PreActBlock(planes, planes, 1, project=False)
                for _ in range(BLOCKS_PER_STAGE - 1)
            ]
            self.stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.final_bn = nn.BatchNorm2d(in_planes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.stem(x))
        for stage in self.stages:
            h = stage(h)
        return F.relu(self.final_bn(h))


class ViewHead(nn.Module):
    """Global average pool, a hidden layer, two binary softmaxes: benign, malignant."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, FEATURES)
        self.out = nn.Linear(FEATURES, 2 * len(LABELS))

    def forward(self, features: Tensor) -> Tensor:
        pooled = features.mean(dim=(2, 3))
        logits = self.out(F.relu(self.hidden(pooled)))
        pairs = logits.view(-1, len(LABELS), 2)
        return torch.softmax(pairs, dim=-1)[..., 1]


class NyuSingleView(nn.Module):
    """One column and one head: the model for a single view."""

    def __init__(self) -> None:
        super().__init__()
        self.column = ResNet22Column()
        self.head = ViewHead()

    def forward(self, x: Tensor) -> Tensor:
        probabilities: Tensor = self.head(self.column(x))
        return probabilities


class NyuImageOnly(nn.Module):
    """All four views: a column per view angle and a head per view."""

    def __init__(self) -> None:
        super().__init__()
        self.columns = nn.ModuleDict({"cc": ResNet22Column(), "mlo": ResNet22Column()})
        self.heads = nn.ModuleDict({view_key(v): ViewHead() for v in VIEWS})

    def forward(self, x: Tensor, view: str) -> Tensor:
        features = self.columns[view_angle(view)](x)
        head: nn.Module = self.heads[view_key(view)]
        probabilities: Tensor = head(features)
        return probabilities
