"""Attestation parsing and verification against documents from the simulated NSM."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.attestation import (
    AttestationDocument,
    PcrPolicy,
    load_root,
    parse_attestation,
    recipient_public_key,
    verify_attestation,
)
from shared.errors import AttestationError, InternalError, Reason
from standins.nsm import DevPki, SimulatedNsm, build_attestation_document

AWS_ROOT_SHA256 = "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
REAL_DOCUMENT = Path(__file__).parent / "fixtures" / "nitro_debug_attestation.b64"
PCR0 = bytes([0x11]) * 48
PCR1 = bytes([0x22]) * 48
PCR2 = bytes([0x33]) * 48
MEASURED = {0: PCR0, 1: PCR1, 2: PCR2}
APPROVED = PcrPolicy(approved=MEASURED)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki.load_or_create(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki.load_or_create(tmp_path_factory.mktemp("other-state"))


@pytest.fixture(scope="module")
def nsm(pki: DevPki) -> SimulatedNsm:
    return SimulatedNsm(pki, MEASURED)


@pytest.fixture
def build(pki: DevPki) -> Callable[..., bytes]:
    """Build a document signed by a fresh dev leaf, overriding chosen fields."""
    now = datetime.now(UTC)
    key, cert = pki.issue_leaf(
        not_before=now - timedelta(minutes=1), not_after=now + timedelta(hours=1)
    )

    def make(**overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "signing_key": key,
            "certificate": cert,
            "cabundle": [pki.root_certificate, pki.intermediate_certificate],
            "pcrs": MEASURED,
        }
        fields.update(overrides)
        return build_attestation_document(**fields)

    return make


def reject(document: bytes, pki: DevPki, **kwargs: Any) -> str:
    with pytest.raises(AttestationError) as caught:
        verify_attestation(document, root=pki.root_certificate, **kwargs)
    assert caught.value.reason is Reason.ATTESTATION_REJECTED
    return str(caught.value)


def test_verify_attestation_accepts_tagged_document(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    document = nsm.attest(user_data=b"job-1", nonce=b"n" * 16)

    doc = verify_attestation(
        document, root=pki.root_certificate, policy=APPROVED, nonce=b"n" * 16
    )

    assert document[0] == 0xD2  # CBOR tag 18
    assert doc.user_data == b"job-1"
    assert doc.pcrs[0] == PCR0 and doc.pcrs[5] == bytes(48)
    assert abs(doc.timestamp - datetime.now(UTC)) < timedelta(minutes=1)


def test_verify_attestation_accepts_untagged_document(pki: DevPki) -> None:
    document = SimulatedNsm(pki, MEASURED, tagged=False).attest()

    doc = verify_attestation(document, root=pki.root_certificate, policy=APPROVED)

    assert document[0] == 0x84  # a bare four-item array
    assert set(doc.pcrs) == set(range(16))


def test_verify_attestation_rejects_wrong_root(
    nsm: SimulatedNsm, other_pki: DevPki
) -> None:
    message = reject(nsm.attest(), other_pki)

    assert "not the pinned root" in message


def test_verify_attestation_rejects_expired_leaf(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    past = datetime.now(UTC) - timedelta(hours=5)
    key, cert = pki.issue_leaf(not_before=past, not_after=past + timedelta(hours=3))

    message = reject(build(signing_key=key, certificate=cert), pki)

    assert "Obscura dev NSM" in message and "not at" in message


def test_verify_attestation_rejects_leaf_after_its_lifetime(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    later = datetime.now(UTC) + timedelta(hours=4)

    assert "not at" in reject(nsm.attest(), pki, at=later)


def test_verify_attestation_rejects_not_yet_valid_leaf(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    key, cert = pki.issue_leaf(not_before=future, not_after=future + timedelta(hours=3))

    assert "not at" in reject(build(signing_key=key, certificate=cert), pki)


def test_verify_attestation_rejects_tampered_payload_byte(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    document = bytearray(nsm.attest())
    document[document.index(PCR1) + 7] ^= 0x01

    message = reject(bytes(document), pki)

    assert "signature does not verify" in message


def test_verify_attestation_rejects_tampered_signature(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    document = bytearray(nsm.attest())
    document[-1] ^= 0x80

    assert "signature does not verify" in reject(bytes(document), pki)


def test_verify_attestation_rejects_signature_by_another_key(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())

    assert "signature does not verify" in reject(build(signing_key=stranger), pki)


def test_verify_attestation_rejects_wrong_cose_alg(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    message = reject(build(alg=-7), pki)

    assert "COSE algorithm is -7" in message


def test_verify_attestation_rejects_missing_pcrs(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    assert "0 PCRs" in reject(build(pcrs={}), pki)


def test_verify_attestation_rejects_debug_pcrs_without_allow_debug(pki: DevPki) -> None:
    document = SimulatedNsm(pki, MEASURED, debug=True).attest()

    message = reject(document, pki, policy=PcrPolicy(approved={}))

    assert "PCR0 is all zeros" in message


def test_verify_attestation_accepts_debug_pcrs_with_allow_debug(pki: DevPki) -> None:
    document = SimulatedNsm(pki, MEASURED, debug=True).attest()
    policy = PcrPolicy(approved={}, allow_debug=True)

    doc = verify_attestation(document, root=pki.root_certificate, policy=policy)

    assert all(value == bytes(48) for value in doc.pcrs.values())


def test_verify_attestation_rejects_pcr_not_equal_to_approved(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    approved = bytes([0x9F]) * 48
    policy = PcrPolicy(approved={**MEASURED, 2: approved})

    message = reject(nsm.attest(), pki, policy=policy)

    assert message == (
        f"PCR2 is {PCR2.hex()[:16]}…, the approved value is {approved.hex()[:16]}…."
    )


def test_verify_attestation_rejects_missing_required_pcr(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    message = reject(
        build(pcrs={0: PCR0, 1: PCR1}), pki, policy=PcrPolicy(approved={0: PCR0})
    )

    assert "lacks required PCR2" in message


def test_verify_attestation_rejects_wrong_nonce(nsm: SimulatedNsm, pki: DevPki) -> None:
    message = reject(nsm.attest(nonce=b"old-nonce"), pki, nonce=b"new-nonce")

    assert "nonce" in message and b"old-nonce".hex()[:16] in message


def test_verify_attestation_rejects_absent_nonce(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    assert "nonce is absent" in reject(nsm.attest(), pki, nonce=b"expected")


@pytest.mark.parametrize(
    ("field", "size", "limit"),
    [("user_data", 513, 512), ("nonce", 513, 512), ("public_key", 1025, 1024)],
)
def test_verify_attestation_rejects_oversized_field(
    build: Callable[..., bytes], pki: DevPki, field: str, size: int, limit: int
) -> None:
    message = reject(build(**{field: b"x" * size}), pki)

    assert f"{field} is {size} bytes" in message and f"..{limit} bytes" in message


def test_verify_attestation_rejects_cabundle_missing_intermediate(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    message = reject(build(cabundle=[pki.root_certificate]), pki)

    assert "does not chain" in message


def test_verify_attestation_rejects_cabundle_with_foreign_intermediate(
    build: Callable[..., bytes], pki: DevPki, other_pki: DevPki
) -> None:
    cabundle = [pki.root_certificate, other_pki.intermediate_certificate]

    assert "does not chain" in reject(build(cabundle=cabundle), pki)


def test_verify_attestation_rejects_leaf_as_issuer(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    now = datetime.now(UTC)
    _, other_leaf = pki.issue_leaf(
        not_before=now - timedelta(minutes=1), not_after=now + timedelta(hours=1)
    )
    cabundle = [pki.root_certificate, pki.intermediate_certificate, other_leaf]

    assert "is not a CA" in reject(build(cabundle=cabundle), pki)


def test_verify_attestation_rejects_unsupported_digest(
    build: Callable[..., bytes], pki: DevPki
) -> None:
    assert "digest is 'SHA256'" in reject(build(digest="SHA256"), pki)


def test_parse_attestation_rejects_trailing_bytes(nsm: SimulatedNsm) -> None:
    with pytest.raises(AttestationError, match="after its CBOR item"):
        parse_attestation(nsm.attest() + b"\x00")


def test_parse_attestation_rejects_other_cbor_tag(nsm: SimulatedNsm) -> None:
    document = bytearray(nsm.attest())
    document[0] = 0xD3  # tag 19 instead of 18

    with pytest.raises(AttestationError, match="CBOR tag 19"):
        parse_attestation(bytes(document))


def test_parse_attestation_rejects_non_integer_pcr_index(
    build: Callable[..., bytes],
) -> None:
    with pytest.raises(AttestationError, match="PCR index '0' is not an integer"):
        parse_attestation(build(pcrs={"0": PCR0}))


def test_parse_attestation_reads_fields_without_trust(
    build: Callable[..., bytes], other_pki: DevPki
) -> None:
    untrusted = [other_pki.root_certificate]
    document = build(user_data=b"u", nonce=b"", public_key=b"k", cabundle=untrusted)

    doc = parse_attestation(document)

    assert isinstance(doc, AttestationDocument)
    assert (doc.user_data, doc.nonce, doc.public_key) == (b"u", b"", b"k")
    assert doc.cabundle == (other_pki.root_certificate,)
    assert cbor2.loads(doc.payload)["user_data"] == b"u"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_parse_attestation_refuses_arbitrary_bytes_with_attestation_error(
    data: bytes,
) -> None:
    with pytest.raises(AttestationError):
        parse_attestation(data)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_verify_attestation_rejects_any_single_byte_change(
    position: int, flip: int, nsm: SimulatedNsm, pki: DevPki
) -> None:
    document = bytearray(nsm.attest())
    document[position % len(document)] ^= flip

    reject(bytes(document), pki)


def test_load_root_default_is_aws_nitro_root_g1() -> None:
    root = load_root()

    assert root.fingerprint(hashes.SHA256()).hex().upper() == AWS_ROOT_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


def test_load_root_missing_file_is_attestation_error(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="Cannot load the attestation root"):
        load_root(tmp_path / "absent.pem")


def test_verify_attestation_accepts_real_nitro_document_at_its_time() -> None:
    document = base64.b64decode(REAL_DOCUMENT.read_text())
    issued = parse_attestation(document).timestamp
    policy = PcrPolicy(approved={}, allow_debug=True)

    doc = verify_attestation(document, root=load_root(), at=issued, policy=policy)

    assert doc.module_id.startswith("i-") and len(doc.cabundle) == 4
    assert (
        hashlib.sha256(doc.cabundle[0].public_bytes(serialization.Encoding.DER))
        .hexdigest()
        .upper()
        == AWS_ROOT_SHA256
    )


def test_verify_attestation_rejects_real_nitro_document_in_debug_mode() -> None:
    document = base64.b64decode(REAL_DOCUMENT.read_text())
    issued = parse_attestation(document).timestamp

    with pytest.raises(AttestationError, match="debug mode"):
        verify_attestation(
            document, root=load_root(), at=issued, policy=PcrPolicy(approved={})
        )


def test_recipient_public_key_returns_enclave_rsa_key(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    doc = verify_attestation(nsm.attest(public_key=spki), root=pki.root_certificate)

    assert (
        recipient_public_key(doc).public_numbers() == key.public_key().public_numbers()
    )


def test_recipient_public_key_rejects_missing_and_non_rsa_keys(
    nsm: SimulatedNsm, pki: DevPki
) -> None:
    ec_spki = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    without = parse_attestation(nsm.attest())
    with_ec = parse_attestation(nsm.attest(public_key=ec_spki))

    with pytest.raises(AttestationError, match="has no public_key"):
        recipient_public_key(without)
    with pytest.raises(AttestationError, match="not RSA"):
        recipient_public_key(with_ec)


def test_verify_attestation_refuses_naive_time(nsm: SimulatedNsm, pki: DevPki) -> None:
    with pytest.raises(InternalError, match="naive"):
        verify_attestation(
            nsm.attest(), root=pki.root_certificate, at=datetime(2030, 1, 1)
        )
