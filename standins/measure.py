"""Local stand-in for the measurements ``nitro-cli build-enclave`` publishes.

PCR2 measures the application files the worker runs, PCR1 the runtime under them
(Python and the distributions the worker imports), PCR0 the whole image: PCR1, PCR2
and the sealed model bundle's manifest. Each register starts at 48 zero bytes and
is extended as Nitro does, ``PCR = SHA384(PCR || SHA384(measurement))``. Every
variable-length field is length-prefixed so no two inputs measure alike.
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from shared.errors import CallerError

PCR_SIZE = 48
WORKER_PACKAGES = ("services.enclave_worker", "shared")
RUNTIME_DISTRIBUTIONS = (
    "asn1crypto",
    "cbor2",
    "cryptography",
    "numpy",
    "pillow",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "safetensors",
    "structlog",
    "torch",
)
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})


def measure_worker(
    *,
    app_dirs: Sequence[Path] | None = None,
    bundle_manifest: bytes | None = None,
) -> dict[str, str]:
    """PCR0, PCR1 and PCR2 of the worker as hex SHA-384 values.

    ``app_dirs`` defaults to the directories of the imported worker packages, so a
    worker started from a copied tree measures that copy.
    """
    pcr1 = extend_all(_runtime_measurements())
    pcr2 = extend_all(_application_measurements(app_dirs or default_app_dirs()))
    image = [pcr1, pcr2] if bundle_manifest is None else [pcr1, pcr2, bundle_manifest]
    pcr0 = extend_all(image)
    return {"PCR0": pcr0.hex(), "PCR1": pcr1.hex(), "PCR2": pcr2.hex()}


def pcr_bytes(pcrs: Mapping[str, str]) -> dict[int, bytes]:
    """``{"PCR0": hex, ...}`` as ``{0: bytes, ...}``, the form documents carry."""
    result: dict[int, bytes] = {}
    for name, value in pcrs.items():
        index = name.removeprefix("PCR")
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise CallerError(f"{name} is not hex: {value[:16]!r}.") from exc
        if not index.isdigit() or not 0 <= int(index) < 32 or len(raw) != PCR_SIZE:
            raise CallerError(
                f"{name} with {len(raw)} bytes is not a PCR; use PCR0..PCR31 with "
                f"{PCR_SIZE}-byte SHA-384 values."
            )
        result[int(index)] = raw
    return result


def extend(pcr: bytes, measurement: bytes) -> bytes:
    """One Nitro PCR extend step."""
    return hashlib.sha384(pcr + hashlib.sha384(measurement).digest()).digest()


def extend_all(measurements: Iterable[bytes]) -> bytes:
    pcr = bytes(PCR_SIZE)
    for measurement in measurements:
        pcr = extend(pcr, measurement)
    return pcr


def default_app_dirs() -> list[Path]:
    """Where the worker packages were imported from."""
    dirs = []
    for name in WORKER_PACKAGES:
        module = importlib.import_module(name)
        if module.__file__ is None:
            raise CallerError(f"Package {name} has no __file__; install it normally.")
        dirs.append(Path(module.__file__).resolve().parent)
    return dirs


def _frame(*fields: bytes) -> bytes:
    return b"".join(len(item).to_bytes(8, "big") + item for item in fields)


def _application_measurements(app_dirs: Sequence[Path]) -> Iterator[bytes]:
    # Paths are relative to each directory's parent, so the label includes the
    # directory's own name ("shared/keys.py") and a copied tree measures alike.
    files = sorted(
        (path.relative_to(root.parent).as_posix(), path)
        for root in app_dirs
        for path in _package_files(root)
    )
    for relative, path in files:
        yield _frame(relative.encode(), path.read_bytes())


def _package_files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        raise CallerError(
            f"Application directory {root} does not exist; pass a package."
        )
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if any(part in _SKIPPED_DIRS or part.startswith(".") for part in parts):
            continue
        if path.is_file() and path.suffix not in _SKIPPED_SUFFIXES:
            yield path


def _runtime_measurements() -> Iterator[bytes]:
    yield _frame(
        sys.implementation.name.encode(),
        platform.python_version().encode(),
        sys.version.encode(),
        platform.machine().encode(),
    )
    for name in RUNTIME_DISTRIBUTIONS:
        yield _distribution_measurement(name)


def _distribution_measurement(name: str) -> bytes:
    """Name, version and RECORD bytes; an absent distribution is measured as such."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return _frame(name.encode(), b"not-installed")
    record = dist.read_text("RECORD") or ""
    return _frame(name.encode(), dist.version.encode(), record.encode())
