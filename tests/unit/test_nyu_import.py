"""The converter against a synthetic file in the published key layout."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from services.enclave_worker.engine import Engine, ModelSpec, read_weights_metadata
from services.enclave_worker.nyu_import import convert_nyu_weights
from shared.errors import CallerError

HEADS = ("lcc", "rcc", "lmlo", "rmlo")


def _bn(prefix: str, channels: int, counters: bool) -> dict[str, torch.Tensor]:
    tensors = {
        f"{prefix}.weight": torch.rand(channels) + 0.5,
        f"{prefix}.bias": torch.randn(channels),
        f"{prefix}.running_mean": torch.randn(channels),
        f"{prefix}.running_var": torch.rand(channels) + 0.5,
    }
    if counters:
        tensors[f"{prefix}.num_batches_tracked"] = torch.tensor(7)
    return tensors


def _column(prefix: str, counters: bool) -> dict[str, torch.Tensor]:
    """The published ViewResNetV2 column: 16 filters, 5 stages of 2 blocks."""
    tensors = {f"{prefix}.first_conv.weight": torch.randn(16, 1, 7, 7) * 0.1}
    in_planes = 16
    for i in range(5):
        planes = 16 * 2**i
        for j in range(2):
            block = f"{prefix}.layer_list.{i}.{j}"
            width = in_planes if j == 0 else planes
            tensors |= _bn(f"{block}.bn1", width, counters)
            tensors[f"{block}.conv1.weight"] = torch.randn(planes, width, 3, 3) * 0.05
            tensors |= _bn(f"{block}.bn2", planes, counters)
            tensors[f"{block}.conv2.weight"] = torch.randn(planes, planes, 3, 3) * 0.05
            if j == 0:
                shortcut = torch.randn(planes, in_planes, 1, 1) * 0.1
                tensors[f"{block}.downsample.0.weight"] = shortcut
        in_planes = planes
    return tensors | _bn(f"{prefix}.final_bn", 256, counters)


def published_state(
    *, counters: bool = True, copies: bool = True, rows: int = 8
) -> dict[str, torch.Tensor]:
    """A fresh dict (tensors shared, so tests may replace entries) of the layout."""
    return dict(_published_state(counters, copies, rows))


@functools.cache
def _published_state(
    counters: bool, copies: bool, rows: int
) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state: dict[str, torch.Tensor] = {}
    for angle in ("cc", "mlo"):
        column = _column(f"four_view_resnet.{angle}", counters)
        state |= column
        if copies:
            for side in ("l", "r"):
                old, new = (
                    f"four_view_resnet.{angle}.",
                    f"four_view_resnet.{side}_{angle}.",
                )
                state |= {k.replace(old, new): v for k, v in column.items()}
    for head in HEADS:
        state[f"fc1_{head}.weight"] = torch.randn(256, 256) * 0.05
        state[f"fc1_{head}.bias"] = torch.randn(256) * 0.05
        state[f"output_layer_{head}.fc_layer.weight"] = torch.randn(rows, 256) * 0.05
        state[f"output_layer_{head}.fc_layer.bias"] = torch.randn(rows) * 0.05
    return state


def _save(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "ImageOnly__ModeImage_weights.p"
    torch.save({"model": state}, path)
    return path


def test_nyu_import_single_view_maps_every_tensor(tmp_path: Path) -> None:
    state = published_state()
    dst = tmp_path / "l_cc.safetensors"

    report = convert_nyu_weights(_save(tmp_path, state), dst, view="L-CC")

    ours = load(dst.read_bytes())
    assert torch.equal(
        ours["column.stem.weight"], state["four_view_resnet.cc.first_conv.weight"]
    )
    assert torch.equal(
        ours["column.stages.3.0.shortcut.weight"],
        state["four_view_resnet.cc.layer_list.3.0.downsample.0.weight"],
    )
    assert torch.equal(
        ours["column.stages.4.1.bn2.running_var"],
        state["four_view_resnet.cc.layer_list.4.1.bn2.running_var"],
    )
    assert torch.equal(ours["head.hidden.bias"], state["fc1_lcc.bias"])
    assert torch.equal(
        ours["head.out.weight"], state["output_layer_lcc.fc_layer.weight"][:4]
    )
    assert report.architecture == "nyu-single-view"
    assert report.aliases_checked == 4 * len(_column("x", True))
    assert "fc1_rmlo.weight" in report.ignored_keys
    assert dict(report.input_spec) == {"L-CC": (2677, 1942)}
    assert read_weights_metadata(dst.read_bytes())["obscura.view"] == "L-CC"


def test_nyu_import_all_views_loads_into_engine(tmp_path: Path) -> None:
    state = published_state(counters=False, copies=False, rows=4)
    dst = tmp_path / "all.safetensors"

    report = convert_nyu_weights(_save(tmp_path, state), dst)

    ours = load(dst.read_bytes())
    assert torch.equal(
        ours["columns.mlo.stages.1.1.conv1.weight"],
        state["four_view_resnet.mlo.layer_list.1.1.conv1.weight"],
    )
    assert torch.equal(
        ours["heads.r_mlo.out.bias"], state["output_layer_rmlo.fc_layer.bias"]
    )
    assert report.counters_filled == 2 * 21 and report.ignored_keys == ()
    spec = ModelSpec("nyu-image-only", {"R-MLO": [96, 64]}, ("benign", "malignant"))
    pixels = (
        torch.randint(1, 4000, (120, 90), dtype=torch.int32).numpy().astype("uint16")
    )
    result = Engine(spec, dst.read_bytes()).predict(pixels, "R-MLO")
    assert set(result) == {"benign", "malignant"}
    assert all(0.0 < p < 1.0 for p in result.values())


def test_nyu_import_output_is_byte_stable(tmp_path: Path) -> None:
    src = _save(tmp_path, published_state())

    first = convert_nyu_weights(src, tmp_path / "a.safetensors", view="R-MLO")
    second = convert_nyu_weights(src, tmp_path / "b.safetensors", view="R-MLO")

    assert first.sha256 == second.sha256
    assert (tmp_path / "a.safetensors").read_bytes() == (
        tmp_path / "b.safetensors"
    ).read_bytes()


def test_nyu_import_missing_key_is_named(tmp_path: Path) -> None:
    state = published_state()
    del state["four_view_resnet.cc.layer_list.2.0.conv1.weight"]

    with pytest.raises(
        CallerError, match=r"missing four_view_resnet\.cc\.layer_list\.2\.0\.conv1"
    ):
        convert_nyu_weights(_save(tmp_path, state), tmp_path / "out", view="L-CC")
    assert not (tmp_path / "out").exists()


def test_nyu_import_extra_key_is_named(tmp_path: Path) -> None:
    state = published_state()
    state["four_view_resnet.cc.layer_list.5.0.conv1.weight"] = torch.zeros(1)

    with pytest.raises(
        CallerError, match=r"unknown four_view_resnet\.cc\.layer_list\.5\.0"
    ):
        convert_nyu_weights(_save(tmp_path, state), tmp_path / "out", view="R-CC")


def test_nyu_import_wrong_shape_is_named(tmp_path: Path) -> None:
    state = published_state(copies=False)
    state["fc1_lmlo.weight"] = torch.zeros(256, 128)

    with pytest.raises(CallerError, match=r"fc1_lmlo\.weight has shape \(256, 128\)"):
        convert_nyu_weights(_save(tmp_path, state), tmp_path / "out", view="L-MLO")


def test_nyu_import_differing_column_copy_is_refused(tmp_path: Path) -> None:
    state = published_state()
    state["four_view_resnet.r_cc.final_bn.bias"] = torch.zeros(256)

    with pytest.raises(
        CallerError, match=r"four_view_resnet\.r_cc\.final_bn\.bias differs"
    ):
        convert_nyu_weights(_save(tmp_path, state), tmp_path / "out")


def test_nyu_import_view_split_file_is_refused(tmp_path: Path) -> None:
    state = published_state()
    state["fc1_cc.weight"] = torch.zeros(512, 512)

    with pytest.raises(CallerError, match="view-split model"):
        convert_nyu_weights(_save(tmp_path, state), tmp_path / "out")


class _NotATensor:
    pass


def test_nyu_import_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.p"
    torch.save({"model": published_state(), "extra": _NotATensor()}, path)

    with pytest.raises(CallerError, match="not a tensors-only torch checkpoint"):
        convert_nyu_weights(path, tmp_path / "out")


def test_nyu_import_unknown_view_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CallerError, match="Unknown view 'L-ML'"):
        convert_nyu_weights(tmp_path / "none.p", tmp_path / "out", view="L-ML")
