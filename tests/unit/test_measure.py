"""PCR measurement of the worker tree, on copies of the tree in tmp_path."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from shared.errors import CallerError
from standins import measure
from standins.measure import default_app_dirs, extend_all, measure_worker, pcr_bytes


@pytest.fixture
def tree(tmp_path: Path) -> list[Path]:
    """A copy of the worker packages, laid out as the repository has them."""
    copies = []
    for name, source in zip(measure.WORKER_PACKAGES, default_app_dirs(), strict=True):
        target = tmp_path / "tree" / name.replace(".", "/")
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(target)
    return copies


def first_python_file(dirs: list[Path]) -> Path:
    return next(path for path in sorted(dirs[0].rglob("*.py")) if path.stat().st_size)


def small_tree(root: Path, files: dict[str, bytes]) -> list[Path]:
    package = root / "app"
    for name, content in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(content)
    return [package]


def test_measure_worker_gives_three_sha384_hex_values() -> None:
    pcrs = measure_worker()

    assert sorted(pcrs) == ["PCR0", "PCR1", "PCR2"]
    assert all(len(value) == 96 and bytes.fromhex(value) for value in pcrs.values())
    assert len(set(pcrs.values())) == 3


def test_measure_worker_same_tree_gives_same_pcrs(tree: list[Path]) -> None:
    assert measure_worker(app_dirs=tree) == measure_worker(app_dirs=tree)


def test_measure_worker_copy_measures_like_the_original(tree: list[Path]) -> None:
    assert measure_worker(app_dirs=tree) == measure_worker()


def test_measure_worker_one_changed_byte_changes_pcr2_and_pcr0(
    tree: list[Path],
) -> None:
    before = measure_worker(app_dirs=tree)
    target = first_python_file(tree)
    content = bytearray(target.read_bytes())
    content[len(content) // 2] ^= 0x01
    target.write_bytes(bytes(content))

    after = measure_worker(app_dirs=tree)

    assert after["PCR2"] != before["PCR2"]
    assert after["PCR0"] != before["PCR0"]
    assert after["PCR1"] == before["PCR1"]


def test_measure_worker_includes_package_data_and_ignores_bytecode(
    tree: list[Path],
) -> None:
    before = measure_worker(app_dirs=tree)
    cache = tree[0] / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"bytecode")
    (tree[0] / "stray.pyc").write_bytes(b"bytecode")
    assert measure_worker(app_dirs=tree) == before

    (tree[0] / "labels.json").write_text("{}")

    assert measure_worker(app_dirs=tree)["PCR2"] != before["PCR2"]


def test_measure_worker_file_boundaries_cannot_shift(tmp_path: Path) -> None:
    one = small_tree(tmp_path / "one", {"a.py": b"ab", "b.py": b"c"})
    two = small_tree(tmp_path / "two", {"a.py": b"a", "b.py": b"bc"})

    assert measure_worker(app_dirs=one)["PCR2"] != measure_worker(app_dirs=two)["PCR2"]


def test_measure_worker_renamed_file_changes_pcr2(tmp_path: Path) -> None:
    one = small_tree(tmp_path / "one", {"a.py": b"x = 1\n"})
    two = small_tree(tmp_path / "two", {"b.py": b"x = 1\n"})

    assert measure_worker(app_dirs=one)["PCR2"] != measure_worker(app_dirs=two)["PCR2"]


def test_measure_worker_bundle_manifest_changes_pcr0_only(tree: list[Path]) -> None:
    bare = measure_worker(app_dirs=tree)
    sealed = measure_worker(app_dirs=tree, bundle_manifest=b'{"model": "a"}')
    other = measure_worker(app_dirs=tree, bundle_manifest=b'{"model": "b"}')

    assert sealed["PCR0"] not in {bare["PCR0"], other["PCR0"]}
    assert sealed["PCR1"] == bare["PCR1"] == other["PCR1"]
    assert sealed["PCR2"] == bare["PCR2"] == other["PCR2"]


def test_measure_worker_pcr0_extends_pcr1_pcr2_and_manifest(tree: list[Path]) -> None:
    pcrs = measure_worker(app_dirs=tree, bundle_manifest=b"manifest")
    pcr0 = bytes(48)
    for part in (bytes.fromhex(pcrs["PCR1"]), bytes.fromhex(pcrs["PCR2"]), b"manifest"):
        pcr0 = hashlib.sha384(pcr0 + hashlib.sha384(part).digest()).digest()

    assert pcrs["PCR0"] == pcr0.hex()


def test_measure_worker_runtime_change_changes_pcr1(
    tree: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = measure_worker(app_dirs=tree)
    extra = (*measure.RUNTIME_DISTRIBUTIONS, "obscura-no-such-distribution")
    monkeypatch.setattr(measure, "RUNTIME_DISTRIBUTIONS", extra)

    after = measure_worker(app_dirs=tree)

    assert after["PCR1"] != before["PCR1"]
    assert after["PCR2"] == before["PCR2"]
    assert measure_worker(app_dirs=tree) == after


def test_measure_worker_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CallerError, match="does not exist"):
        measure_worker(app_dirs=[tmp_path / "absent"])


def test_extend_all_follows_the_nitro_extend_rule() -> None:
    expected = hashlib.sha384(bytes(48) + hashlib.sha384(b"x").digest()).digest()

    assert extend_all([b"x"]) == expected
    assert extend_all([]) == bytes(48)


def test_pcr_bytes_converts_hex_names_to_indices() -> None:
    pcrs = measure_worker()

    converted = pcr_bytes(pcrs)

    assert sorted(converted) == [0, 1, 2]
    assert converted[2].hex() == pcrs["PCR2"]


@pytest.mark.parametrize(
    "pcrs",
    [{"PCR0": "zz"}, {"PCR0": "00" * 32}, {"PCR32": "00" * 48}, {"BOOT": "00" * 48}],
)
def test_pcr_bytes_rejects_malformed_values(pcrs: dict[str, str]) -> None:
    with pytest.raises(CallerError):
        pcr_bytes(pcrs)
