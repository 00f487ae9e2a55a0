"""The ``obscura`` command: vendor tooling, key policies and the local mesh.

Every command exits 0 on success and 2 with one line on stderr for a caller
error or a refused operation, so scripts can tell the two apart from a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from obscura_cli.settings import CliSettings
from shared.errors import ObscuraError
from shared.keypolicy import (
    EnclaveMeasurement,
    HospitalPrincipals,
    VendorPrincipals,
    hospital_key_policy,
    vendor_key_policy,
)

T = TypeVar("T")


def view_from_name(name: str) -> str:
    """``1_R_MLO.png`` -> ``R-MLO``; L-CC when the name says nothing."""
    match = re.search(r"(?<![A-Za-z])([LR])[_-](CC|MLO)(?![A-Za-z])", name.upper())
    return f"{match[1]}-{match[2]}" if match else "L-CC"


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def fail(message: str) -> None:
    click.echo(f"obscura: {message}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns Obscura errors into one line and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ObscuraError as exc:
            fail(f"{exc} [{exc.reason.value}]")


@click.group(cls=_Group)
def main() -> None:
    """Obscura: confidential inference for medical imaging."""


@main.group()
def model() -> None:
    """Seal and import models."""


@model.command("seal")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
@click.option(
    "--arch",
    "architecture",
    required=True,
    help="Architecture name the enclave engine knows.",
)
@click.option("--name", required=True)
@click.option("--version", required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--labels",
    default=None,
    help="Comma-separated output labels (default: the architecture's).",
)
@click.option(
    "--input-spec", default=None, help="JSON input spec (default: the architecture's)."
)
@click.option(
    "--key-id", default=None, help="Vendor KMS key (default OBSCURA_VENDOR_KEY_ID)."
)
def model_seal(
    weights: Path,
    architecture: str,
    name: str,
    version: str,
    out: Path,
    labels: str | None,
    input_spec: str | None,
    key_id: str | None,
) -> None:
    """Seal model weights (safetensors or TorchScript) under the vendor key."""
    from obscura_cli.sealing import seal_model_command

    settings = CliSettings()
    manifest = run_async(
        seal_model_command(
            settings,
            weights=weights,
            out=out,
            architecture=architecture,
            name=name,
            version=version,
            labels=labels,
            input_spec=input_spec,
            key_id=key_id or settings.vendor_key_id,
        )
    )
    click.echo(manifest.model_dump_json(indent=2))


@model.command("import-nyu")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The published ImageOnly__ModeImage_weights.p file.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--view",
    type=click.Choice(["L-CC", "R-CC", "L-MLO", "R-MLO"]),
    default=None,
    help="Convert one view's column and head (nyu-single-view); default all four.",
)
def model_import_nyu(weights: Path, out: Path, view: str | None) -> None:
    """Convert the published NYU weights into safetensors, ready to seal.

    The file is read with torch.load(weights_only=True); every key is mapped and any
    key or shape left over on either side fails the conversion.
    """
    from services.enclave_worker.nyu_import import convert_nyu_weights

    report = convert_nyu_weights(weights, out, view=view)
    click.echo(
        json.dumps(
            {
                "architecture": report.architecture,
                "view": report.view,
                "tensors": report.tensors,
                "parameters": report.parameters,
                "sha256": report.sha256,
                "ignored_keys": list(report.ignored_keys),
                "next": f"obscura model seal --weights {out} --arch"
                f" {report.architecture} --name NAME --version V --out BUNDLE",
            },
            indent=2,
        )
    )


@main.group()
def enclave() -> None:
    """Enclave image tooling."""


@enclave.command("measure")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
)
def enclave_measure(bundle: Path | None) -> None:
    """Print the worker image's PCRs as JSON.

    On a build host with nitro-cli, the EIF's measurements are authoritative; this
    measures the worker tree the way the local simulated NSM does.
    """
    from shared.bundle import read_manifest
    from standins.measure import measure_worker

    manifest = read_manifest(bundle).canonical_bytes() if bundle else None
    click.echo(json.dumps(measure_worker(bundle_manifest=manifest), indent=2))


@main.group("key-policy")
def key_policy() -> None:
    """Print the KMS key policies of the trust model."""


def _measurement(
    pcr0: str | None, pcr1: str | None, pcr2: str | None, pcrs_file: Path | None
) -> EnclaveMeasurement:
    values: dict[int, str] = {}
    if pcrs_file is not None:
        loaded = json.loads(pcrs_file.read_text())
        values.update(
            {int(k.removeprefix("PCR")): v.lower() for k, v in loaded.items()}
        )
    for index, value in ((0, pcr0), (1, pcr1), (2, pcr2)):
        if value is not None:
            values[index] = value.lower()
    if 0 not in values:
        fail(
            "give the approved PCR0 with --pcr0 HEX or --pcrs FILE"
            " (from obscura enclave measure)."
        )
    return EnclaveMeasurement(values)


def _pcr_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in (
        click.option(
            "--pcrs",
            "pcrs_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="JSON from obscura enclave measure.",
        ),
        click.option("--pcr2", default=None),
        click.option("--pcr1", default=None),
        click.option(
            "--pcr0", default=None, help="Approved image measurement (SHA-384 hex)."
        ),
    ):
        command = option(command)
    return command


@key_policy.command("vendor")
@_pcr_options
@click.option("--admin-arn", default=None)
@click.option("--sealer-arn", default=None)
@click.option(
    "--enclave-arn",
    default=None,
    help="The parent instance role the enclave's KMS calls are signed with.",
)
def key_policy_vendor(
    pcr0: str | None,
    pcr1: str | None,
    pcr2: str | None,
    pcrs_file: Path | None,
    admin_arn: str | None,
    sealer_arn: str | None,
    enclave_arn: str | None,
) -> None:
    """The vendor key: model keys released only to the approved enclave image."""
    settings = CliSettings()
    principals = VendorPrincipals(
        admin=admin_arn or settings.role_arn(settings.vendor_admin_arn, "vendor-admin"),
        sealer=sealer_arn
        or settings.role_arn(settings.vendor_sealer_arn, "vendor-sealer"),
        enclave=enclave_arn or settings.role_arn(settings.enclave_arn, "enclave"),
    )
    policy = vendor_key_policy(principals, _measurement(pcr0, pcr1, pcr2, pcrs_file))
    click.echo(json.dumps(policy, indent=2))


@key_policy.command("hospital")
@_pcr_options
@click.option("--admin-arn", default=None)
@click.option("--encryptor-arn", default=None)
@click.option("--enclave-arn", default=None)
@click.option("--results-arn", default=None)
def key_policy_hospital(
    pcr0: str | None,
    pcr1: str | None,
    pcr2: str | None,
    pcrs_file: Path | None,
    admin_arn: str | None,
    encryptor_arn: str | None,
    enclave_arn: str | None,
    results_arn: str | None,
) -> None:
    """The hospital key: image and result keys, each to its own principal."""
    settings = CliSettings()
    principals = HospitalPrincipals(
        admin=admin_arn
        or settings.role_arn(settings.hospital_admin_arn, "hospital-admin"),
        encryptor=encryptor_arn
        or settings.role_arn(settings.encryptor_arn, "encryptor"),
        enclave=enclave_arn or settings.role_arn(settings.enclave_arn, "enclave"),
        results=results_arn or settings.role_arn(settings.results_arn, "results"),
    )
    policy = hospital_key_policy(principals, _measurement(pcr0, pcr1, pcr2, pcrs_file))
    click.echo(json.dumps(policy, indent=2))


STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("OBSCURA_STATE_DIR", ".obscura"),
    show_default=".obscura or OBSCURA_STATE_DIR",
)


@main.group()
def dev() -> None:
    """The local mesh on the stand-ins (development machines only)."""


@dev.command("up")
@STATE_DIR_OPTION
@click.option("--free-ports", is_flag=True, help="Pick free ports instead of 8080...")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True)
def dev_up(state_dir: Path, free_ports: bool, timeout_s: float) -> None:
    """Start moto, the KMS gate and the five services; return when all are ready."""
    from obscura_cli.dev import print_status, status, up

    mesh = up(state_dir.resolve(), free_ports=free_ports, timeout_s=timeout_s)
    print_status(status(state_dir.resolve()))
    click.echo(f"gateway: {mesh['gateway_url']}  tenant: {mesh['tenant']}")
    click.echo(
        f"token (all scopes) in {mesh['token_file']}; approved PCR0 {mesh['pcr0']}"
    )


@dev.command("down")
@STATE_DIR_OPTION
def dev_down(state_dir: Path) -> None:
    """Stop exactly what `dev up` started."""
    from obscura_cli.dev import down

    down(state_dir.resolve())


@dev.command("status")
@STATE_DIR_OPTION
@click.option("--json", "as_json", is_flag=True)
def dev_status(state_dir: Path, as_json: bool) -> None:
    """What runs: pid, state, readiness, restarts and log file of each service."""
    from obscura_cli.dev import print_status, status

    report = status(state_dir.resolve())
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_status(report)


@dev.command("token")
@STATE_DIR_OPTION
@click.option("--tenant", required=True)
@click.option(
    "--scopes",
    required=True,
    help="Comma-separated: jobs:submit,jobs:read,results:read,results:decrypt,admin",
)
@click.option("--name", default="dev token")
def dev_token(state_dir: Path, tenant: str, scopes: str, name: str) -> None:
    """Mint a bearer token on the local mesh; it is printed once, stored hashed."""
    from obscura_cli.dev import read_mesh
    from services.results.tokens import mint_token

    mesh = read_mesh(state_dir.resolve())
    wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
    click.echo(mint_token(mesh["database_url"], tenant, wanted, name))


@main.command("submit")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--view", default=None, help="L-CC, R-CC, L-MLO or R-MLO for every file.")
@click.option("--priority", type=click.Choice(["routine", "stat"]), default="routine")
@click.option(
    "--wait", is_flag=True, help="Wait, read each prediction, verify receipts."
)
@click.option("--timeout", "timeout_s", default=300.0, show_default=True)
@click.option("--gateway", default=None, help="Default: the local mesh's gateway.")
@click.option("--token", default=None, envvar="OBSCURA_TOKEN")
@click.option("--pcr0", default=None, help="Approved PCR0 to verify receipts against.")
@click.option(
    "--root", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None
)
@STATE_DIR_OPTION
def submit(
    files: tuple[Path, ...],
    view: str | None,
    priority: str,
    wait: bool,
    timeout_s: float,
    gateway: str | None,
    token: str | None,
    pcr0: str | None,
    root: Path | None,
    state_dir: Path,
) -> None:
    """Post images as jobs; with --wait print predictions and receipt checks.

    Without --view, a DICOM's view comes from its tags and a PNG's from a name like
    1_R_CC.png.
    """
    from obscura_cli.submit import print_table, submit_all

    mesh: dict[str, Any] = {}
    if gateway is None or token is None or (wait and pcr0 is None):
        from obscura_cli.dev import read_mesh

        mesh = read_mesh(state_dir.resolve())
    token = token or Path(mesh["token_file"]).read_text().strip()
    approved = bytes.fromhex(pcr0 or mesh["pcr0"]) if wait else None
    root_pem = root or (Path(mesh["dev_root_pem"]) if mesh else None)
    views = {
        path: view_from_name(path.name)
        for path in files
        if path.suffix.lower() == ".png"
    }
    items = run_async(
        submit_all(
            list(files),
            gateway=gateway or mesh["gateway_url"],
            token=token,
            view=view,
            views=views,
            priority=priority,
            wait=wait,
            timeout_s=timeout_s,
            pcr0=approved,
            root_pem=root_pem,
        )
    )
    print_table(items)
    if any(item.status in ("refused", "failed") for item in items):
        sys.exit(1)
    if wait and any(item.verified != "yes" for item in items):
        sys.exit(1)


@main.command("demo")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A folder of PNG or DICOM mammograms; default: the synthetic phantom.",
)
@STATE_DIR_OPTION
def demo(images: Path | None, state_dir: Path) -> None:
    """Bring the mesh up, run the sample images through it, print, bring it down."""
    from obscura_cli.dev import down, up
    from obscura_cli.submit import print_table, submit_all
    from standins.phantom import phantom_png

    state = state_dir.resolve()
    if images is None:
        folder = state / "phantom"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for view, seed in (("L-CC", 0), ("R-MLO", 1)):
            path = folder / f"phantom_{view.replace('-', '_')}.png"
            path.write_bytes(phantom_png(view, seed=seed))
            files.append(path)
    else:
        files = sorted(
            p for p in images.iterdir() if p.suffix.lower() in (".png", ".dcm")
        )
        if not files:
            fail(f"no .png or .dcm files in {images}.")
    click.echo("starting the mesh (moto, KMS gate, five services)...", err=True)
    mesh = up(state, free_ports=True, timeout_s=300)
    try:
        items = run_async(
            submit_all(
                files,
                gateway=mesh["gateway_url"],
                token=Path(mesh["token_file"]).read_text().strip(),
                view=None,
                views={p: view_from_name(p.name) for p in files if p.suffix == ".png"},
                priority="routine",
                wait=True,
                timeout_s=300,
                pcr0=bytes.fromhex(mesh["pcr0"]),
                root_pem=Path(mesh["dev_root_pem"]),
            )
        )
        print_table(items)
    finally:
        down(state, quiet=True)
        click.echo("mesh stopped.", err=True)
    if any(item.verified != "yes" for item in items):
        sys.exit(1)


@main.group()
def bench() -> None:
    """Benchmarks (not part of the test run)."""


@bench.command("worker")
@click.argument(
    "images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--view", default=None, help="View for every image (default: from names)."
)
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1, 100))
def bench_worker(images: tuple[Path, ...], view: str | None, repeat: int) -> None:
    """Time each stage of a job inside the worker at CC size.

    Without IMAGES it uses the synthetic 16-bit phantom (3328 x 2560). The view of
    a file named like 1_R_CC.png is read from its name.
    """
    from obscura_cli.bench import run_worker_bench
    from standins.phantom import phantom_png

    inputs = [
        (path.name, path.read_bytes(), view or view_from_name(path.name))
        for path in images
    ]
    if not inputs:
        inputs = [("phantom L-CC", phantom_png("L-CC"), "L-CC")]
    run_worker_bench(inputs, repeat)


@bench.command("mesh")
@click.argument(
    "images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--jobs", default=16, show_default=True, type=click.IntRange(2, 500))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--slots", default=2, show_default=True, type=click.IntRange(1, 16))
def bench_mesh(images: tuple[Path, ...], jobs: int, threads: int, slots: int) -> None:
    """The whole mesh over the bare model: throughput, latency, envelope cost.

    Without IMAGES it uses the synthetic CC phantom (3328 x 2560).
    """
    from obscura_cli.bench_mesh import run_mesh_bench
    from standins.phantom import phantom_png

    inputs = [(p.name, p.read_bytes(), view_from_name(p.name)) for p in images]
    if not inputs:
        inputs = [("phantom L-CC", phantom_png("L-CC"), "L-CC")]
    run_mesh_bench(inputs, jobs, threads, slots)


@main.group()
def receipt() -> None:
    """Check prediction receipts offline."""


@receipt.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--pcr0", required=True, help="The approved enclave image measurement.")
@click.option(
    "--root",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pinned root certificate (PEM); default the AWS Nitro Enclaves root.",
)
@click.option("--sealed-result-sha256", default=None)
def receipt_verify(
    file: Path, pcr0: str, root: Path | None, sealed_result_sha256: str | None
) -> None:
    """Exit 0 if FILE is a receipt from the approved image, else 2 with the reason."""
    from shared.attestation import load_root
    from shared.receipt import Receipt, verify_receipt

    try:
        approved = bytes.fromhex(pcr0)
    except ValueError:
        fail(f"--pcr0 must be hex, got {pcr0[:16]!r}.")
    loaded = Receipt.loads(file.read_bytes())
    doc = verify_receipt(
        loaded,
        root=load_root(root),
        pcr0=approved,
        sealed_result_sha256=sealed_result_sha256,
    )
    click.echo(
        json.dumps(
            {
                "verified": True,
                "job_id": loaded.record.job_id,
                "model_sha256": loaded.record.model_sha256,
                "module_id": doc.module_id,
                "timestamp": doc.timestamp.isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
