"""Converter of the published NYU image-only weights into our safetensors layout.

The published single-image weights (``models/ImageOnly__ModeImage_weights.p`` in
the NYU repository) are a torch checkpoint ``{"model": state_dict}`` of their
four-view image model. Its key layout, for each view angle ``cc`` and ``mlo`` and
each view ``lcc``, ``rcc``, ``lmlo``, ``rmlo``::

    four_view_resnet.{angle}.first_conv.weight                 (16, 1, 7, 7)
    four_view_resnet.{angle}.layer_list.{i}.{j}.bn1.*          BN of the block input
    four_view_resnet.{angle}.layer_list.{i}.{j}.conv1.weight   3x3, stride on j = 0
    four_view_resnet.{angle}.layer_list.{i}.{j}.bn2.*
    four_view_resnet.{angle}.layer_list.{i}.{j}.conv2.weight
    four_view_resnet.{angle}.layer_list.{i}.0.downsample.0.weight   1x1 projection
    four_view_resnet.{angle}.final_bn.*                        (256,)
    fc1_{view}.weight, fc1_{view}.bias                         (256, 256), (256,)
    output_layer_{view}.fc_layer.weight, .bias                 (4 or 8, 256)

where BN is ``weight``, ``bias``, ``running_mean``, ``running_var`` and, from
torch 0.4.1 on, ``num_batches_tracked``. Left and right views share a column, and
the saving model registered that column a second time under ``l_{angle}`` and
``r_{angle}``: those copies are accepted and must equal the shared one. Only the
first four output rows (benign and malignant, two classes each) are used, as in
the published single-image loader. The view-split file ``sample_image_model.p``
has another head layout and is refused.

The file is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from services.enclave_worker.engine import dump_weights
from services.enclave_worker.models import (
    NYU_IMAGE_ONLY,
    NYU_SINGLE_VIEW,
    get_architecture,
)
from services.enclave_worker.models.nyu import (
    INPUT_SIZES,
    LABELS,
    VIEWS,
    view_angle,
)
from shared.errors import CallerError, InternalError

OUTPUT_ROWS = 2 * len(LABELS)
COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class ImportReport:
    """What the conversion produced, for the manifest of the model bundle."""

    architecture: str
    view: str | None
    input_spec: Mapping[str, tuple[int, int]]
    labels: tuple[str, ...]
    tensors: int
    parameters: int
    aliases_checked: int
    counters_filled: int
    ignored_keys: tuple[str, ...]
    sha256: str


def convert_nyu_weights(
    src: Path, dst: Path, *, view: str | None = None
) -> ImportReport:
    """Convert the published file to safetensors for one view, or all four if None.

    With a view the result is a ``nyu-single-view`` model; without, the whole
    ``nyu-image-only`` model. Any unknown or missing key, any shape that does not
    fit and any column copy that differs raises ``CallerError``.
    """
    if view is not None and view not in VIEWS:
        raise CallerError(f"Unknown view {view!r}; use one of {', '.join(VIEWS)}.")
    source = _load_published(src)
    name = NYU_IMAGE_ONLY if view is None else NYU_SINGLE_VIEW
    module = get_architecture(name).build()
    target = module.state_dict()
    mapping = _published_names(target, view)
    _check_keys(source, mapping)
    aliases = _check_aliases(source)
    tensors, filled = _convert(source, target, mapping)
    _verify_loads(module, tensors)

    data = dump_weights(tensors, _metadata(name, view))
    dst.write_bytes(data)
    wanted = set(mapping.values()) | _alias_names(source)
    return ImportReport(
        architecture=name,
        view=view,
        input_spec={v: INPUT_SIZES[v] for v in VIEWS if view in (None, v)},
        labels=LABELS,
        tensors=len(tensors),
        parameters=sum(t.numel() for t in tensors.values()),
        aliases_checked=aliases,
        counters_filled=filled,
        ignored_keys=tuple(sorted(set(source) - wanted)),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def published_column_name(ours: str) -> str:
    """Our column tensor name -> the published one, e.g. ``stem.weight``."""
    if ours.startswith("stem."):
        return "first_conv." + ours.removeprefix("stem.")
    if ours.startswith("stages."):
        name = "layer_list." + ours.removeprefix("stages.")
        return name.replace(".shortcut.", ".downsample.0.")
    return ours


def published_head_name(ours: str, view: str) -> str:
    """Our head tensor name -> the published one for ``view``."""
    short = view.lower().replace("-", "")
    if ours.startswith("hidden."):
        return f"fc1_{short}." + ours.removeprefix("hidden.")
    return f"output_layer_{short}.fc_layer." + ours.removeprefix("out.")


def _published_names(
    target: Mapping[str, torch.Tensor], view: str | None
) -> dict[str, str]:
    """Our state_dict name -> published name, for every tensor of the target."""
    mapping: dict[str, str] = {}
    for ours in target:
        scope, _, rest = ours.partition(".")
        if scope == "column":
            angle = view_angle(view or "")
            mapping[ours] = f"four_view_resnet.{angle}.{published_column_name(rest)}"
        elif scope == "head":
            mapping[ours] = published_head_name(rest, view or "")
        elif scope == "columns":
            angle, _, rest = rest.partition(".")
            mapping[ours] = f"four_view_resnet.{angle}.{published_column_name(rest)}"
        else:
            head, _, rest = rest.partition(".")
            mapping[ours] = published_head_name(rest, head.upper().replace("_", "-"))
    return mapping


def _known_names() -> set[str]:
    """Every name the full published layout may hold, copies included."""
    full = _published_names(get_architecture(NYU_IMAGE_ONLY).build().state_dict(), None)
    known = set(full.values())
    for name in full.values():
        alias = _alias_of(name)
        if alias:
            known.update(alias)
    return known


def _alias_of(name: str) -> tuple[str, ...]:
    prefix = "four_view_resnet."
    if not name.startswith(prefix):
        return ()
    angle, _, rest = name.removeprefix(prefix).partition(".")
    if angle not in ("cc", "mlo"):
        return ()
    return tuple(f"{prefix}{side}_{angle}.{rest}" for side in ("l", "r"))


def _alias_names(source: Mapping[str, torch.Tensor]) -> set[str]:
    return {name for name in source if _primary_of(name) != name}


def _primary_of(name: str) -> str:
    for side in ("l", "r"):
        for angle in ("cc", "mlo"):
            copy = f"four_view_resnet.{side}_{angle}."
            if name.startswith(copy):
                return f"four_view_resnet.{angle}." + name.removeprefix(copy)
    return name


def _load_published(src: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(src, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise CallerError(
            f"No weights file at {src}; pass the published file."
        ) from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CallerError(
            f"{src} is not a tensors-only torch checkpoint ({exc}); "
            "pass the published image-only weights file."
        ) from exc
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CallerError(
            f"{src} holds no state dict of tensors under 'model'; "
            "pass the published image-only weights file."
        )
    return state


def _check_keys(source: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> None:
    if "fc1_cc.weight" in source:
        raise CallerError(
            "This is the view-split model (fc1_cc, fc1_mlo), not the single-image "
            "one; convert ImageOnly__ModeImage_weights.p instead."
        )
    required = {p for p in mapping.values() if not p.endswith(COUNTER)}
    missing = sorted(required - set(source))
    unknown = sorted(set(source) - _known_names())
    if missing or unknown:
        raise CallerError(
            f"The published weights do not match the NYU image-only layout: "
            f"missing {_few(missing)}; unknown {_few(unknown)}; "
            "pass the unmodified published file."
        )


def _check_aliases(source: Mapping[str, torch.Tensor]) -> int:
    checked = 0
    for name in sorted(_alias_names(source)):
        primary = source.get(_primary_of(name))
        copy = source[name]
        if (
            primary is None
            or primary.shape != copy.shape
            or not torch.equal(primary, copy)
        ):
            raise CallerError(
                f"{name} differs from the shared column tensor {_primary_of(name)}; "
                "pass the unmodified published file."
            )
        checked += 1
    return checked


def _convert(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
) -> tuple[dict[str, torch.Tensor], int]:
    tensors: dict[str, torch.Tensor] = {}
    filled = 0
    for ours, published in mapping.items():
        expected = target[ours]
        tensor = source.get(published)
        if tensor is None:  # only batch-norm counters may be absent (torch 0.4.0)
            tensors[ours] = torch.zeros_like(expected)
            filled += 1
            continue
        tensor = _fit_output_rows(published, tensor)
        if tensor.shape != expected.shape:
            raise CallerError(
                f"{published} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected.shape)}; pass the published image-only weights."
            )
        tensors[ours] = tensor.to(expected.dtype).clone().contiguous()
    return tensors, filled


def _fit_output_rows(published: str, tensor: torch.Tensor) -> torch.Tensor:
    """Keep the first four output rows; the file may hold four or eight."""
    if ".fc_layer." in published and tensor.shape[0] in (OUTPUT_ROWS, 2 * OUTPUT_ROWS):
        return tensor[:OUTPUT_ROWS]
    return tensor


def _verify_loads(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InternalError(f"Converted weights do not load: {exc}") from exc


def _metadata(architecture: str, view: str | None) -> dict[str, str]:
    return {
        "obscura.architecture": architecture,
        "obscura.source": "nyu-breast-cancer-classifier image-only weights",
        "obscura.view": view or "all",
    }


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
