"""Attested key release end to end: our KMS client, our policies, measured PCRs.

The enclave's PCRs here are measured from the worker tree itself, as the
simulated NSM does at boot, so changing one byte of one measured file changes
what the enclave can unwrap.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

import services.enclave_worker
import shared
from obscura_cli.main import main as cli
from shared.bundle import read_manifest
from shared.cms import generate_recipient_key, public_key_der
from shared.envelope import seal_bytes, unseal_bytes
from shared.errors import PermanentDependencyError, Reason
from shared.keypolicy import (
    EnclaveMeasurement,
    HospitalPrincipals,
    VendorPrincipals,
    hospital_key_policy,
    vendor_key_policy,
)
from shared.keys import Recipient
from shared.kms import AwsKeyService, Credentials, KmsEndpoint
from standins.kms_gate import GateServer
from standins.measure import measure_worker, pcr_bytes
from standins.nsm import DevPki, SimulatedNsm
from tests.integration.conftest import PRINCIPALS, REGION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODEL_CONTEXT = {
    "purpose": "model",
    "model": "demo",
    "version": "1",
    "sha256": "0" * 64,
}


def measured_pcrs(app_dirs: list[Path] | None = None) -> dict[int, bytes]:
    return pcr_bytes(measure_worker(app_dirs=app_dirs))


def measurement(pcrs: Mapping[int, bytes]) -> EnclaveMeasurement:
    return EnclaveMeasurement({0: pcrs[0].hex()})


def keys_for(
    gate: GateServer, name: str
) -> contextlib.AbstractAsyncContextManager[AwsKeyService]:
    principal = PRINCIPALS[name]
    endpoint = KmsEndpoint(region=REGION, endpoint_url=gate.url)
    creds = Credentials(principal.access_key_id, principal.secret_access_key)
    return AwsKeyService.connect(endpoint, creds)


async def create_key(gate: GateServer, policy: dict[str, object]) -> str:
    async with keys_for(gate, "admin") as admin:
        answer = await admin._client.create_key(Policy=json.dumps(policy))
    return str(answer["KeyMetadata"]["Arn"])


def recipient(nsm: SimulatedNsm) -> Recipient:
    key = generate_recipient_key()
    return Recipient(nsm.attest(public_key=public_key_der(key)), key)


def vendor_policy(pcrs: Mapping[int, bytes]) -> dict[str, object]:
    principals = VendorPrincipals(
        admin=PRINCIPALS["admin"].arn,
        sealer=PRINCIPALS["sealer"].arn,
        enclave=PRINCIPALS["enclave"].arn,
    )
    return vendor_key_policy(principals, measurement(pcrs))


def hospital_policy(pcrs: Mapping[int, bytes]) -> dict[str, object]:
    principals = HospitalPrincipals(
        admin=PRINCIPALS["admin"].arn,
        encryptor=PRINCIPALS["encryptor"].arn,
        enclave=PRINCIPALS["enclave"].arn,
        results=PRINCIPALS["results"].arn,
    )
    return hospital_key_policy(principals, measurement(pcrs))


async def sealed_model(gate: GateServer, key_id: str) -> bytearray:
    async with keys_for(gate, "sealer") as sealer:
        return await seal_bytes(b"model weights", sealer, key_id, MODEL_CONTEXT)


def tampered_tree(tmp_path: Path) -> list[Path]:
    """A copy of the measured worker tree with one byte of one file changed."""
    copies = []
    for package in (services.enclave_worker, shared):
        source = Path(package.__file__).parent
        target = tmp_path / source.relative_to(source.parents[1])
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(target)
    victim = copies[0] / "jobs.py"
    data = bytearray(victim.read_bytes())
    data[-2] ^= 0x01
    victim.write_bytes(bytes(data))
    return copies


async def test_key_release_approved_enclave_unwraps_model(
    kms_gate: GateServer, dev_pki: DevPki
) -> None:
    pcrs = measured_pcrs()
    key_id = await create_key(kms_gate, vendor_policy(pcrs))
    sealed = await sealed_model(kms_gate, key_id)
    enclave = SimulatedNsm(dev_pki, pcrs)
    async with keys_for(kms_gate, "enclave") as keys:
        opened = await unseal_bytes(
            sealed, keys, MODEL_CONTEXT, recipient=recipient(enclave)
        )
    assert bytes(opened) == b"model weights"


async def test_key_release_one_changed_byte_in_worker_is_denied(
    kms_gate: GateServer, dev_pki: DevPki, tmp_path: Path
) -> None:
    approved = measured_pcrs()
    altered = measured_pcrs(tampered_tree(tmp_path))
    assert altered[0] != approved[0] and altered[2] != approved[2]
    assert altered[1] == approved[1]
    key_id = await create_key(kms_gate, vendor_policy(approved))
    sealed = await sealed_model(kms_gate, key_id)
    enclave = SimulatedNsm(dev_pki, altered)
    async with keys_for(kms_gate, "enclave") as keys:
        with pytest.raises(PermanentDependencyError) as denied:
            await unseal_bytes(
                sealed, keys, MODEL_CONTEXT, recipient=recipient(enclave)
            )
    assert denied.value.reason is Reason.ACCESS_DENIED
    assert "AccessDeniedException" in str(denied.value)


async def test_key_release_debug_mode_enclave_is_denied(
    kms_gate: GateServer, dev_pki: DevPki
) -> None:
    pcrs = measured_pcrs()
    key_id = await create_key(kms_gate, vendor_policy(pcrs))
    sealed = await sealed_model(kms_gate, key_id)
    debug = SimulatedNsm(dev_pki, pcrs, debug=True)
    async with keys_for(kms_gate, "enclave") as keys:
        with pytest.raises(PermanentDependencyError) as denied:
            await unseal_bytes(sealed, keys, MODEL_CONTEXT, recipient=recipient(debug))
    assert denied.value.reason is Reason.ACCESS_DENIED


async def test_key_release_parent_without_recipient_is_denied(
    kms_gate: GateServer,
) -> None:
    key_id = await create_key(kms_gate, vendor_policy(measured_pcrs()))
    sealed = await sealed_model(kms_gate, key_id)
    async with keys_for(kms_gate, "enclave") as parent:
        with pytest.raises(PermanentDependencyError) as denied:
            await unseal_bytes(sealed, parent, MODEL_CONTEXT)
    assert denied.value.reason is Reason.ACCESS_DENIED


async def test_key_release_results_principal_reads_results_not_images(
    kms_gate: GateServer, dev_pki: DevPki
) -> None:
    pcrs = measured_pcrs()
    key_id = await create_key(kms_gate, hospital_policy(pcrs))
    job = {"tenant": "st-marys", "job_id": "00000000-0000-0000-0000-000000000001"}
    enclave = SimulatedNsm(dev_pki, pcrs)
    async with keys_for(kms_gate, "enclave") as keys:
        sealed_result = await seal_bytes(
            b'{"benign": 0.1}',
            keys,
            key_id,
            {"purpose": "result", **job},
            recipient=recipient(enclave),
        )
    async with keys_for(kms_gate, "encryptor") as encryptor:
        sealed_image = await seal_bytes(
            b"pixels", encryptor, key_id, {"purpose": "image", **job}
        )
    async with keys_for(kms_gate, "results") as results:
        opened = await unseal_bytes(
            sealed_result, results, {"purpose": "result", **job}
        )
        assert bytes(opened) == b'{"benign": 0.1}'
        with pytest.raises(PermanentDependencyError) as denied:
            await unseal_bytes(sealed_image, results, {"purpose": "image", **job})
    assert denied.value.reason is Reason.ACCESS_DENIED


async def test_key_release_encryptor_cannot_make_result_keys(
    kms_gate: GateServer,
) -> None:
    key_id = await create_key(kms_gate, hospital_policy(measured_pcrs()))
    context = {"purpose": "result", "tenant": "t", "job_id": "j"}
    async with keys_for(kms_gate, "encryptor") as encryptor:
        with pytest.raises(PermanentDependencyError) as denied:
            await seal_bytes(b"forged prediction", encryptor, key_id, context)
    assert denied.value.reason is Reason.ACCESS_DENIED


def test_model_seal_cli_makes_a_bundle_the_enclave_opens(
    kms_gate: GateServer,
    dev_pki: DevPki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from services.enclave_worker.demo_weights import make_demo_weights
    from services.enclave_worker.unlock import unseal_model

    pcrs = measured_pcrs()
    key_id = asyncio.run(create_key(kms_gate, vendor_policy(pcrs)))
    weights = tmp_path / "demo.safetensors"
    weights.write_bytes(make_demo_weights("nyu-image-only"))
    sealer = PRINCIPALS["sealer"]
    monkeypatch.setenv("OBSCURA_KMS_ENDPOINT_URL", kms_gate.url)
    monkeypatch.setenv("OBSCURA_AWS_ACCESS_KEY_ID", sealer.access_key_id)
    monkeypatch.setenv("OBSCURA_AWS_SECRET_ACCESS_KEY", sealer.secret_access_key)
    monkeypatch.setenv("OBSCURA_VENDOR_KEY_ID", key_id)
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli,
        [
            "model", "seal", "--weights", str(weights), "--arch", "nyu-image-only",
            "--name", "nyu-demo", "--version", "0.1", "--out", str(bundle),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = read_manifest(bundle)
    assert manifest.weights_format == "safetensors"
    assert manifest.labels == ["benign", "malignant"]
    assert manifest.encryption_context["sha256"] == manifest.plaintext_sha256
    header_json = weights.read_bytes()[8:72]
    assert header_json not in (bundle / "model.sealed").read_bytes()

    async def open_bundle() -> bytes:
        enclave = SimulatedNsm(dev_pki, pcrs)
        async with keys_for(kms_gate, "enclave") as keys:
            _, plaintext = await unseal_model(bundle, keys, recipient(enclave))
        return bytes(plaintext)

    assert asyncio.run(open_bundle()) == weights.read_bytes()
