"""Open KMS ``CiphertextForRecipient`` blobs inside the enclave.

When a KMS call carries a ``Recipient``, KMS returns the plaintext only as a CMS
ContentInfo (RFC 5652) of type EnvelopedData, BER encoded: one
KeyTransRecipientInfo naming the enclave key by subjectKeyIdentifier, the content
key wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256), the content encrypted with
AES-256-CBC. This module accepts exactly that shape and nothing looser.

EnvelopedData carries no integrity of its own: CBC is malleable and anyone who
holds the enclave's public key (it is in the attestation document) can build a
valid blob. Integrity comes from the TLS session to KMS, which terminates inside
the enclave; never accept a blob that arrived any other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC

from shared.errors import IntegrityError, Reason

RECIPIENT_KEY_BITS = 2048
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1_OID = "1.2.840.113549.1.1.8"
P_SPECIFIED = "1.2.840.113549.1.1.9"
SHA256 = "2.16.840.1.101.3.4.2.1"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
ENVELOPED_DATA = "1.2.840.113549.1.7.3"
DATA = "1.2.840.113549.1.7.1"

_CONTENT_KEY_BYTES = 32
_IV_BYTES = 16
_DECRYPT_FAILED = (
    "CiphertextForRecipient did not decrypt with the enclave's recipient key; "
    "check that KMS was given this enclave's current attestation document."
)


@dataclass(frozen=True)
class CiphertextForRecipientSummary:
    """What a blob declares, for tests and diagnostics; no key material."""

    subject_key_identifier: bytes
    key_encryption_algorithm: str
    oaep_hash_algorithm: str
    mgf1_hash_algorithm: str
    content_encryption_algorithm: str
    iv: bytes
    encrypted_key_length: int
    encrypted_content_length: int
    indefinite_length: bool


@dataclass(frozen=True)
class _Envelope:
    summary: CiphertextForRecipientSummary
    encrypted_key: bytes = field(repr=False)
    encrypted_content: bytes = field(repr=False)


def generate_recipient_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key pair for one enclave boot; the private half stays put."""
    return rsa.generate_private_key(public_exponent=65537, key_size=RECIPIENT_KEY_BITS)


def public_key_der(private_key: rsa.RSAPrivateKey) -> bytes:
    """The SubjectPublicKeyInfo DER the enclave hands the NSM for its attestation."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING contents."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def inspect_ciphertext_for_recipient(blob: bytes) -> CiphertextForRecipientSummary:
    """Check a blob's structure and report what it declares, without decrypting."""
    return _parse(blob).summary


def open_ciphertext_for_recipient(
    blob: bytes,
    private_key: rsa.RSAPrivateKey,
    *,
    plaintext_length: int | None = None,
) -> bytes:
    """Return the plaintext KMS wrapped for this enclave.

    The subjectKeyIdentifier is reported by ``inspect_ciphertext_for_recipient``
    but not compared: AWS does not document how it derives it. Pass
    ``plaintext_length`` (32 for a data key) whenever it is known, so a tampered
    blob whose padding happens to verify is refused as well.
    """
    envelope = _parse(blob)
    key_bytes = private_key.key_size // 8
    if envelope.summary.encrypted_key_length != key_bytes:
        raise _invalid(
            f"CiphertextForRecipient wraps a {envelope.summary.encrypted_key_length}"
            f"-byte encrypted key but the recipient key is {key_bytes} bytes; "
            "ask KMS again with this enclave's attestation document."
        )
    # Every decryption failure below raises the same message with no chained
    # cause, so OAEP, key-length and CBC padding failures are indistinguishable.
    try:
        plaintext = _decrypt(envelope, private_key)
    except ValueError:
        raise _invalid(_DECRYPT_FAILED) from None
    if plaintext_length is not None and len(plaintext) != plaintext_length:
        raise _invalid(_DECRYPT_FAILED)
    return plaintext


def _decrypt(envelope: _Envelope, private_key: rsa.RSAPrivateKey) -> bytes:
    """OAEP-unwrap the content key, then AES-256-CBC; ValueError on any failure."""
    oaep = OAEP(mgf=MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    content_key = private_key.decrypt(envelope.encrypted_key, oaep)
    if len(content_key) != _CONTENT_KEY_BYTES:
        raise ValueError("content key has the wrong length")
    decryptor = Cipher(AES(content_key), CBC(envelope.summary.iv)).decryptor()
    padded = decryptor.update(envelope.encrypted_content) + decryptor.finalize()
    unpadder = padding.PKCS7(AES.block_size).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _invalid(message: str) -> IntegrityError:
    return IntegrityError(message, reason=Reason.INVALID_CIPHERTEXT)


def _parse(blob: bytes) -> _Envelope:
    # asn1crypto decodes lazily, so malformed inner fields surface as ValueError
    # or TypeError only when touched; the whole walk sits inside this handler.
    try:
        content_info = cms.ContentInfo.load(blob, strict=True)
        return _check_content_info(content_info, indefinite=blob[1:2] == b"\x80")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise _invalid(
            f"CiphertextForRecipient of {len(blob)} bytes is not well-formed "
            "BER or DER; pass the CiphertextForRecipient field from KMS unchanged."
        ) from exc


def _check_content_info(
    content_info: cms.ContentInfo, *, indefinite: bool
) -> _Envelope:
    content_type = content_info["content_type"].dotted
    if content_type != ENVELOPED_DATA:
        raise _invalid(
            f"CiphertextForRecipient has content type {content_type}, "
            f"expected envelopedData {ENVELOPED_DATA}."
        )
    enveloped = content_info["content"]
    ktri = _single_key_trans_recipient(enveloped["recipient_infos"])
    oaep_hash, mgf1_hash = _check_key_encryption(ktri["key_encryption_algorithm"])

    version = enveloped["version"].native
    if version != "v2":
        raise _invalid(f"EnvelopedData is version {version}, expected v2.")
    algorithm, iv, encrypted_content = _check_encrypted_content(
        enveloped["encrypted_content_info"]
    )
    encrypted_key = ktri["encrypted_key"].native
    summary = CiphertextForRecipientSummary(
        subject_key_identifier=ktri["rid"].chosen.native,
        key_encryption_algorithm=ktri["key_encryption_algorithm"]["algorithm"].dotted,
        oaep_hash_algorithm=oaep_hash,
        mgf1_hash_algorithm=mgf1_hash,
        content_encryption_algorithm=algorithm,
        iv=iv,
        encrypted_key_length=len(encrypted_key),
        encrypted_content_length=len(encrypted_content),
        indefinite_length=indefinite,
    )
    return _Envelope(summary, encrypted_key, encrypted_content)


def _single_key_trans_recipient(
    recipient_infos: cms.RecipientInfos,
) -> cms.KeyTransRecipientInfo:
    if len(recipient_infos) != 1:
        raise _invalid(
            f"CiphertextForRecipient has {len(recipient_infos)} recipient infos, "
            "expected exactly 1."
        )
    recipient_info = recipient_infos[0]
    if recipient_info.name != "ktri":
        raise _invalid(
            f"CiphertextForRecipient recipient info is {recipient_info.name}, "
            "expected a KeyTransRecipientInfo (ktri)."
        )
    ktri: cms.KeyTransRecipientInfo = recipient_info.chosen
    version = ktri["version"].native
    rid = ktri["rid"].name
    if version != "v2" or rid != "subject_key_identifier":
        raise _invalid(
            f"KeyTransRecipientInfo is version {version} with rid {rid}, "
            "expected v2 with subject_key_identifier."
        )
    return ktri


def _check_key_encryption(algorithm: cms.KeyEncryptionAlgorithm) -> tuple[str, str]:
    """Require RSAES-OAEP with SHA-256 and MGF1-SHA-256, spelled out explicitly."""
    oid = algorithm["algorithm"].dotted
    if oid != RSAES_OAEP:
        raise _invalid(
            f"key encryption algorithm is {oid}, expected id-RSAES-OAEP {RSAES_OAEP}."
        )
    # Absent parameters mean the RFC 4055 defaults, SHA-1 and MGF1-SHA-1.
    params = algorithm["parameters"]
    if not isinstance(params, algos.RSAESOAEPParams):
        params = algos.RSAESOAEPParams({})
    hash_oid = _digest_oid(params["hash_algorithm"])
    mgf = params["mask_gen_algorithm"]
    mgf_oid = mgf["algorithm"].dotted
    mgf1_hash = _digest_oid(mgf["parameters"]) if mgf_oid == MGF1_OID else mgf_oid
    if hash_oid != SHA256 or mgf1_hash != SHA256:
        raise _invalid(
            f"RSAES-OAEP uses hash {hash_oid} and mask {mgf_oid} with {mgf1_hash}, "
            f"expected sha256 {SHA256} with mgf1 {MGF1_OID} over sha256."
        )
    p_source = params["p_source_algorithm"]
    source_oid = p_source["algorithm"].dotted
    if source_oid != P_SPECIFIED:
        raise _invalid(
            f"RSAES-OAEP label source is {source_oid}, expected pSpecified "
            f"{P_SPECIFIED}."
        )
    label = p_source["parameters"].native
    if label:
        raise _invalid(
            f"RSAES-OAEP carries a {len(label)}-byte label, expected an empty label."
        )
    return hash_oid, mgf1_hash


def _digest_oid(digest: algos.DigestAlgorithm) -> str:
    oid: str = digest["algorithm"].dotted
    # RFC 4055 allows the hash parameters to be absent or NULL, nothing else.
    if digest["parameters"].native is not None:
        return f"{oid} with parameters"
    return oid


def _check_encrypted_content(
    info: cms.EncryptedContentInfo,
) -> tuple[str, bytes, bytes]:
    content_type = info["content_type"].dotted
    if content_type != DATA:
        raise _invalid(
            f"encrypted content type is {content_type}, expected id-data {DATA}."
        )
    algorithm = info["content_encryption_algorithm"]
    oid = algorithm["algorithm"].dotted
    if oid != AES256_CBC:
        raise _invalid(
            f"content encryption algorithm is {oid}, expected aes256-CBC {AES256_CBC}."
        )
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes):
        raise _invalid("aes256-CBC has no IV parameter, expected a 16-byte IV.")
    if len(iv) != _IV_BYTES:
        raise _invalid(f"aes256-CBC IV is {len(iv)} bytes, expected {_IV_BYTES}.")
    content = info["encrypted_content"].native
    if not content or len(content) % _IV_BYTES:
        raise _invalid(
            f"encrypted content is {len(content or b'')} bytes, expected a "
            f"non-zero multiple of {_IV_BYTES}."
        )
    return oid, iv, content
