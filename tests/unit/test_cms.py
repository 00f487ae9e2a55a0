"""CiphertextForRecipient: our parser and builder, against each other and OpenSSL."""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cms import (
    AES256_CBC,
    RSAES_OAEP,
    SHA256,
    generate_recipient_key,
    inspect_ciphertext_for_recipient,
    open_ciphertext_for_recipient,
    public_key_der,
    subject_key_identifier,
)
from shared.errors import CallerError, IntegrityError, Reason
from standins.cms import build_ciphertext_for_recipient

DATA_KEY = bytes(range(32))
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is not installed on this machine"
)
OAEP_SHA256 = [
    "-keyopt",
    "rsa_padding_mode:oaep",
    "-keyopt",
    "rsa_oaep_md:sha256",
    "-keyopt",
    "rsa_mgf1_md:sha256",
]


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    return generate_recipient_key()


@functools.cache
def _blob(*, ber: bool) -> bytes:
    return build_ciphertext_for_recipient(DATA_KEY, public_key_der(_key()), ber=ber)


def _rejected(blob: bytes, key: rsa.RSAPrivateKey | None = None) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        open_ciphertext_for_recipient(blob, key or _key())
    assert caught.value.reason is Reason.INVALID_CIPHERTEXT
    return caught.value


def _flip(blob: bytes, index: int) -> bytes:
    mutated = bytearray(blob)
    mutated[index] ^= 0x01
    return bytes(mutated)


def _rewrite(blob: bytes, mutate: Callable[[cms.EnvelopedData], None]) -> bytes:
    """Re-encode a blob as DER after changing its EnvelopedData in place."""
    content_info = cms.ContentInfo.load(blob)
    mutate(content_info["content"])
    rewritten: bytes = content_info.dump(force=True)
    return rewritten


def _ktri(enveloped: cms.EnvelopedData) -> cms.KeyTransRecipientInfo:
    ktri: cms.KeyTransRecipientInfo = enveloped["recipient_infos"][0].chosen
    return ktri


# --- our builder, our parser ------------------------------------------------


@pytest.mark.parametrize("ber", [True, False])
def test_open_ciphertext_for_recipient_recovers_builder_plaintext(ber: bool) -> None:
    assert open_ciphertext_for_recipient(_blob(ber=ber), _key()) == DATA_KEY


@pytest.mark.parametrize("size", [0, 1, 15, 16, 33, 4096])
def test_open_ciphertext_for_recipient_recovers_any_length(size: int) -> None:
    plaintext = os.urandom(size)
    blob = build_ciphertext_for_recipient(plaintext, public_key_der(_key()))

    assert open_ciphertext_for_recipient(blob, _key()) == plaintext


def test_inspect_ciphertext_for_recipient_reports_builder_algorithms() -> None:
    summary = inspect_ciphertext_for_recipient(_blob(ber=True))

    assert summary.subject_key_identifier == subject_key_identifier(_key().public_key())
    assert summary.key_encryption_algorithm == RSAES_OAEP
    assert summary.oaep_hash_algorithm == SHA256
    assert summary.mgf1_hash_algorithm == SHA256
    assert summary.content_encryption_algorithm == AES256_CBC
    assert len(summary.iv) == 16
    assert summary.encrypted_key_length == 256
    assert summary.encrypted_content_length == 48
    assert summary.indefinite_length is True


def test_build_ciphertext_for_recipient_ber_uses_indefinite_lengths_and_pieces() -> (
    None
):
    blob = build_ciphertext_for_recipient(bytes(100), public_key_der(_key()))
    start = blob.index(b"\xa0\x80\x04")
    pieces, offset = [], start + 2
    while blob[offset : offset + 2] != b"\x00\x00":
        length = blob[offset + 1]
        pieces.append(length)
        offset += 2 + length

    assert blob[:2] == b"\x30\x80"
    assert blob.endswith(b"\x00" * 10)
    assert pieces == [32, 32, 32, 16]


def test_build_ciphertext_for_recipient_der_mode_is_canonical_der() -> None:
    blob = _blob(ber=False)

    assert cms.ContentInfo.load(blob).dump(force=True) == blob
    assert inspect_ciphertext_for_recipient(blob).indefinite_length is False


def test_build_ciphertext_for_recipient_uses_fresh_iv_and_key() -> None:
    first = build_ciphertext_for_recipient(DATA_KEY, public_key_der(_key()))
    second = build_ciphertext_for_recipient(DATA_KEY, public_key_der(_key()))

    assert first != second
    assert (
        inspect_ciphertext_for_recipient(first).iv
        != inspect_ciphertext_for_recipient(second).iv
    )


@pytest.mark.parametrize(
    "make_der",
    [
        lambda: (
            rsa.generate_private_key(65537, 1024)  # noqa: S505 - must be refused
            .public_key()
            .public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        ),
        lambda: (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        ),
        lambda: b"\x30\x03\x02\x01\x00",
    ],
    ids=["rsa-1024", "ec-p256", "not-a-key"],
)
def test_build_ciphertext_for_recipient_weak_or_foreign_key_rejected(
    make_der: Callable[[], bytes],
) -> None:
    with pytest.raises(CallerError) as caught:
        build_ciphertext_for_recipient(DATA_KEY, make_der())

    assert caught.value.reason is Reason.INVALID_REQUEST


def test_subject_key_identifier_is_sha1_of_subject_public_key_bits() -> None:
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - RFC 5280 method 1 is SHA-1
    spki = core.Sequence.load(public_key_der(_key()))
    digest.update(spki[1].contents[1:])  # skip the BIT STRING's unused-bits octet

    assert subject_key_identifier(_key().public_key()) == digest.finalize()


def test_generate_recipient_key_is_rsa_2048_e65537() -> None:
    numbers = _key().public_key().public_numbers()

    assert (_key().key_size, numbers.e) == (2048, 65537)


# --- deviations -----------------------------------------------------------------


def test_open_ciphertext_for_recipient_wrong_private_key_rejected() -> None:
    error = _rejected(_blob(ber=True), generate_recipient_key())

    assert "did not decrypt" in str(error)


@pytest.mark.parametrize("ber", [True, False])
def test_open_ciphertext_for_recipient_flipped_key_and_content_look_alike(
    ber: bool,
) -> None:
    blob = _blob(ber=ber)
    summary = inspect_ciphertext_for_recipient(blob)
    key_at = blob.index(b"\x04\x82\x01\x00") + 4 + 100
    # With a 32-byte plaintext the last block is all padding, so any flip in the
    # block before it breaks the padding deterministically.
    content = cms.ContentInfo.load(blob)["content"]["encrypted_content_info"]
    ciphertext = content["encrypted_content"].native
    content_at = blob.index(ciphertext[16:32])
    assert summary.encrypted_content_length == 48

    key_error = _rejected(_flip(blob, key_at))
    content_error = _rejected(_flip(blob, content_at))

    assert str(key_error) == str(content_error)
    assert key_error.__cause__ is None and content_error.__cause__ is None
    assert key_error.__suppress_context__ and content_error.__suppress_context__


def test_open_ciphertext_for_recipient_iv_flip_is_not_detectable() -> None:
    """CBC is malleable: only TLS to KMS protects this blob (see the module doc)."""
    blob = _blob(ber=False)
    iv_at = blob.index(inspect_ciphertext_for_recipient(blob).iv)

    tampered = open_ciphertext_for_recipient(_flip(blob, iv_at), _key())

    assert tampered != DATA_KEY and len(tampered) == len(DATA_KEY)


def test_open_ciphertext_for_recipient_plaintext_length_mismatch_rejected() -> None:
    error = _rejected_with_length(_blob(ber=True), 16)

    assert "did not decrypt" in str(error)


def _rejected_with_length(blob: bytes, length: int) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        open_ciphertext_for_recipient(blob, _key(), plaintext_length=length)
    assert caught.value.reason is Reason.INVALID_CIPHERTEXT
    return caught.value


@pytest.mark.parametrize("ber", [True, False])
@pytest.mark.parametrize("cut", [0, 1, 2, 30, 200, -40, -2, -1])
def test_open_ciphertext_for_recipient_truncated_blob_rejected(
    ber: bool, cut: int
) -> None:
    blob = _blob(ber=ber)
    error = _rejected(blob[:cut])

    assert "not well-formed" in str(error)


def test_open_ciphertext_for_recipient_trailing_bytes_rejected() -> None:
    _rejected(_blob(ber=False) + b"\x00")


def test_open_ciphertext_for_recipient_other_content_type_rejected() -> None:
    blob = cms.ContentInfo({"content_type": "data", "content": b"key"}).dump()

    assert "1.2.840.113549.1.7.1" in str(_rejected(blob))


def test_open_ciphertext_for_recipient_enveloped_data_v0_rejected() -> None:
    def downgrade(enveloped: cms.EnvelopedData) -> None:
        enveloped["version"] = "v0"

    assert "EnvelopedData is version v0" in str(
        _rejected(_rewrite(_blob(ber=False), downgrade))
    )


def test_open_ciphertext_for_recipient_ktri_v0_with_ski_rejected() -> None:
    def downgrade(enveloped: cms.EnvelopedData) -> None:
        _ktri(enveloped)["version"] = "v0"

    assert "version v0 with rid subject_key_identifier" in str(
        _rejected(_rewrite(_blob(ber=False), downgrade))
    )


def test_open_ciphertext_for_recipient_short_iv_rejected() -> None:
    def shorten(enveloped: cms.EnvelopedData) -> None:
        algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
        algorithm["parameters"] = bytes(8)

    assert "IV is 8 bytes" in str(_rejected(_rewrite(_blob(ber=False), shorten)))


def test_open_ciphertext_for_recipient_non_data_inner_type_rejected() -> None:
    def retype(enveloped: cms.EnvelopedData) -> None:
        enveloped["encrypted_content_info"]["content_type"] = "signed_data"

    assert "encrypted content type is 1.2.840.113549.1.7.2" in str(
        _rejected(_rewrite(_blob(ber=False), retype))
    )


def test_open_ciphertext_for_recipient_null_hash_parameters_accepted() -> None:
    def add_null(enveloped: cms.EnvelopedData) -> None:
        sha256 = {"algorithm": "sha256", "parameters": core.Null()}
        _ktri(enveloped)["key_encryption_algorithm"] = {
            "algorithm": "rsaes_oaep",
            "parameters": {
                "hash_algorithm": sha256,
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
            },
        }

    blob = _rewrite(_blob(ber=False), add_null)

    assert b"\x05\x00" in blob
    assert open_ciphertext_for_recipient(blob, _key()) == DATA_KEY


def test_open_ciphertext_for_recipient_absent_oaep_parameters_mean_sha1() -> None:
    def strip(enveloped: cms.EnvelopedData) -> None:
        _ktri(enveloped)["key_encryption_algorithm"] = {"algorithm": "rsaes_oaep"}

    assert "hash 1.3.14.3.2.26" in str(_rejected(_rewrite(_blob(ber=False), strip)))


def test_open_ciphertext_for_recipient_mismatching_ski_still_opens() -> None:
    def replace_ski(enveloped: cms.EnvelopedData) -> None:
        _ktri(enveloped)["rid"] = cms.RecipientIdentifier(
            name="subject_key_identifier", value=b"\xaa" * 20
        )

    blob = _rewrite(_blob(ber=False), replace_ski)

    assert inspect_ciphertext_for_recipient(blob).subject_key_identifier == (
        b"\xaa" * 20
    )
    assert open_ciphertext_for_recipient(blob, _key()) == DATA_KEY


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_open_ciphertext_for_recipient_mutations_fail_only_as_integrity_errors(
    data: st.DataObject,
) -> None:
    blob = bytearray(_blob(ber=data.draw(st.booleans())))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))

    try:
        plaintext = open_ciphertext_for_recipient(bytes(blob), _key())
    except IntegrityError as exc:
        assert exc.reason is Reason.INVALID_CIPHERTEXT
    else:
        assert len(plaintext) == len(DATA_KEY)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_open_ciphertext_for_recipient_random_bytes_rejected(blob: bytes) -> None:
    _rejected(blob)


# --- OpenSSL as the independent producer and consumer --------------------------


@dataclass(frozen=True)
class _OpensslRecipient:
    key: rsa.RSAPrivateKey
    key_path: Path
    cert_path: Path
    ski: bytes


def _make_recipient(directory: Path, name: str) -> _OpensslRecipient:
    key = generate_recipient_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return _OpensslRecipient(key, key_path, cert_path, ski.digest)


@pytest.fixture(scope="module")
def openssl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openssl-cms")


@pytest.fixture(scope="module")
def alice(openssl_dir: Path) -> _OpensslRecipient:
    return _make_recipient(openssl_dir, "alice")


@pytest.fixture(scope="module")
def bob(openssl_dir: Path) -> _OpensslRecipient:
    return _make_recipient(openssl_dir, "bob")


def _openssl(args: list[str], stdin: bytes) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, "cms", *args], input=stdin, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _openssl_encrypt(
    recipients: list[tuple[_OpensslRecipient, list[str]]],
    *,
    cipher: str = "-aes-256-cbc",
    extra: tuple[str, ...] = ("-keyid",),
) -> bytes:
    args = ["-encrypt", "-binary", cipher, *extra, "-outform", "DER"]
    for recipient, keyopts in recipients:
        args += ["-recip", str(recipient.cert_path), *keyopts]
    return _openssl(args, DATA_KEY)


@needs_openssl
@pytest.mark.parametrize("stream", [False, True], ids=["der", "stream-ber"])
def test_open_ciphertext_for_recipient_reads_openssl_output(
    alice: _OpensslRecipient, stream: bool
) -> None:
    extra = ("-keyid", "-stream") if stream else ("-keyid",)
    blob = _openssl_encrypt([(alice, OAEP_SHA256)], extra=extra)
    summary = inspect_ciphertext_for_recipient(blob)

    assert summary.indefinite_length is stream
    assert summary.subject_key_identifier == alice.ski
    assert open_ciphertext_for_recipient(blob, alice.key, plaintext_length=32) == (
        DATA_KEY
    )


@needs_openssl
@pytest.mark.parametrize("ber", [True, False])
def test_build_ciphertext_for_recipient_decrypts_with_openssl(
    alice: _OpensslRecipient, ber: bool
) -> None:
    blob = build_ciphertext_for_recipient(DATA_KEY, public_key_der(alice.key), ber=ber)
    args = ["-decrypt", "-binary", "-inform", "DER", "-inkey", str(alice.key_path)]

    assert _openssl(args, blob) == DATA_KEY


@needs_openssl
@pytest.mark.parametrize(
    ("keyopts", "found"),
    [
        ([], "1.2.840.113549.1.1.1"),
        (["-keyopt", "rsa_padding_mode:oaep"], "hash 1.3.14.3.2.26"),
        (
            [*OAEP_SHA256[:4], "-keyopt", "rsa_mgf1_md:sha1"],
            "with 1.3.14.3.2.26",
        ),
        ([*OAEP_SHA256, "-keyopt", "rsa_oaep_label:0102"], "2-byte label"),
    ],
    ids=["pkcs1v15", "oaep-sha1", "mgf1-sha1", "oaep-label"],
)
def test_open_ciphertext_for_recipient_openssl_key_transport_rejected(
    alice: _OpensslRecipient, keyopts: list[str], found: str
) -> None:
    blob = _openssl_encrypt([(alice, keyopts)])

    assert found in str(_rejected(blob, alice.key))


@needs_openssl
def test_open_ciphertext_for_recipient_two_recipients_rejected(
    alice: _OpensslRecipient, bob: _OpensslRecipient
) -> None:
    blob = _openssl_encrypt([(alice, OAEP_SHA256), (bob, OAEP_SHA256)])

    assert "2 recipient infos" in str(_rejected(blob, alice.key))


@needs_openssl
def test_open_ciphertext_for_recipient_issuer_and_serial_rid_rejected(
    alice: _OpensslRecipient,
) -> None:
    blob = _openssl_encrypt([(alice, OAEP_SHA256)], extra=())

    assert "rid issuer_and_serial_number" in str(_rejected(blob, alice.key))


@needs_openssl
def test_open_ciphertext_for_recipient_aes128_cbc_rejected(
    alice: _OpensslRecipient,
) -> None:
    blob = _openssl_encrypt([(alice, OAEP_SHA256)], cipher="-aes-128-cbc")

    assert "2.16.840.1.101.3.4.1.2," in str(_rejected(blob, alice.key))
