import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding

from obscura_cli.main import main, view_from_name
from shared.receipt import Receipt, ReceiptRecord
from standins.nsm import DevPki, SimulatedNsm
from tests.unit.test_nyu_import import published_state

PCRS = {i: hashlib.sha384(f"pcr{i}".encode()).digest() for i in (0, 1, 2)}


def test_import_nyu_writes_safetensors_and_names_the_next_step(tmp_path: Path) -> None:
    source = tmp_path / "ImageOnly__ModeImage_weights.p"
    torch.save({"model": published_state()}, source)
    out = tmp_path / "nyu.safetensors"
    result = CliRunner().invoke(
        main, ["model", "import-nyu", "--weights", str(source), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["architecture"] == "nyu-image-only"
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert "obscura model seal" in report["next"]


def test_import_nyu_fails_loudly_on_a_leftover_key(tmp_path: Path) -> None:
    state = published_state()
    state["surprise.weight"] = torch.zeros(3)
    source = tmp_path / "weights.p"
    torch.save({"model": state}, source)
    result = CliRunner().invoke(
        main,
        ["model", "import-nyu", "--weights", str(source), "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert "surprise.weight" in result.output
    assert not (tmp_path / "x").exists()


@pytest.fixture
def signed_receipt(tmp_path: Path) -> tuple[Path, Path, DevPki]:
    pki = DevPki.load_or_create(tmp_path / "state")
    record = ReceiptRecord(
        job_id="job-1",
        sealed_input_sha256="a" * 64,
        model_sha256="b" * 64,
        sealed_result_sha256="c" * 64,
        nonce="0f" * 16,
    )
    document = SimulatedNsm(pki, PCRS).attest(
        user_data=record.digest(), nonce=record.nonce_bytes()
    )
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(Receipt(record, document).to_json()))
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_certificate.public_bytes(Encoding.PEM))
    return path, root, pki


def verify(path: Path, root: Path, pcr0: bytes) -> object:
    args = ["receipt", "verify", str(path), "--pcr0", pcr0.hex(), "--root", str(root)]
    return CliRunner().invoke(main, args)


def test_receipt_verify_accepts_a_good_receipt(signed_receipt) -> None:
    path, root, _ = signed_receipt
    result = verify(path, root, PCRS[0])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["job_id"] == "job-1"


def test_receipt_verify_rejects_another_pcr0(signed_receipt) -> None:
    path, root, _ = signed_receipt
    result = verify(path, root, hashlib.sha384(b"other image").digest())
    assert result.exit_code == 2
    assert "PCR0" in result.output


def test_receipt_verify_rejects_a_swapped_result_hash(signed_receipt) -> None:
    path, root, _ = signed_receipt
    data = json.loads(path.read_text())
    data["record"]["sealed_result_sha256"] = "d" * 64
    path.write_text(json.dumps(data))
    result = verify(path, root, PCRS[0])
    assert result.exit_code == 2
    assert "does not match the attested user data" in result.output


def test_receipt_verify_rejects_a_forged_signature(signed_receipt, tmp_path) -> None:
    path, root, _ = signed_receipt
    forger = DevPki.load_or_create(tmp_path / "forger")
    data = json.loads(path.read_text())
    record = ReceiptRecord(**data["record"])
    forged = SimulatedNsm(forger, PCRS).attest(
        user_data=record.digest(), nonce=record.nonce_bytes()
    )
    path.write_text(json.dumps(Receipt(record, forged).to_json()))
    result = verify(path, root, PCRS[0])
    assert result.exit_code == 2
    assert "attestation_rejected" in result.output


def test_receipt_verify_rejects_garbage(tmp_path: Path, signed_receipt) -> None:
    _, root, _ = signed_receipt
    path = tmp_path / "junk.json"
    path.write_text("not json")
    result = verify(path, root, PCRS[0])
    assert result.exit_code == 2
    assert "not JSON" in result.output


@pytest.mark.parametrize(
    ("name", "view"),
    [("1_R_CC.png", "R-CC"), ("thumb_0_L_MLO.png", "L-MLO"), ("scan.png", "L-CC")],
)
def test_view_from_name_reads_side_and_projection(name: str, view: str) -> None:
    assert view_from_name(name) == view
