"""Nitro Enclaves attestation documents: parse, then verify against a pinned root.

A document is a COSE_Sign1 structure (tagged with CBOR tag 18 or untagged) whose
payload is a CBOR map produced by the Nitro Secure Module. ``parse_attestation``
checks structure and the size limits of the Nitro specification and trusts nothing;
``verify_attestation`` adds the ES384 signature, the certificate chain up to the
pinned root and, when asked, the PCR policy and the caller's nonce. Every failure is
an ``AttestationError`` whose message names what failed.
"""

from __future__ import annotations

import hmac
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_der_public_key,
)
from cryptography.utils import CryptographyDeprecationWarning

from shared.errors import AttestationError, InternalError

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_ALG_ES384 = -35
ES384_SIGNATURE_SIZE = 96
MAX_DOCUMENT_SIZE = 32 * 1024
MAX_PAYLOAD_SIZE = 16 * 1024
MAX_PCRS = 32
PCR_SIZES = frozenset({32, 48, 64})
MAX_CERTIFICATE_SIZE = 1024
MAX_PUBLIC_KEY_SIZE = 1024
MAX_USER_DATA_SIZE = 512
MAX_NONCE_SIZE = 512
DEBUG_MODE_PCRS = (0, 1, 2)

AWS_NITRO_ROOT_PATH = Path(__file__).parent / "certs" / "aws_nitro_root_g1.pem"

_CERTIFICATE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    # Raised instead of warned when warnings are errors, as in the test suite.
    CryptographyDeprecationWarning,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1
)


@dataclass(frozen=True)
class AttestationDocument:
    """The payload of an attestation document, decoded and size-checked."""

    module_id: str
    digest: str
    timestamp: datetime
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class PcrPolicy:
    """Which PCR values a verifier accepts.

    ``approved`` maps PCR index to its expected value; ``required`` PCRs must be
    present in the document. Debug-mode enclaves report all-zero PCRs, which prove
    nothing about the image, so they pass only with ``allow_debug``.
    """

    approved: Mapping[int, bytes]
    required: frozenset[int] = frozenset({0, 1, 2})
    allow_debug: bool = False


@dataclass(frozen=True)
class _CoseSign1:
    protected: bytes
    payload: bytes
    signature: bytes


def parse_attestation(document: bytes) -> AttestationDocument:
    """Decode a document's structure and limits; establishes no trust at all."""
    return _parse_payload(_decode_cose(document).payload)


def verify_attestation(
    document: bytes,
    *,
    root: x509.Certificate,
    at: datetime | None = None,
    policy: PcrPolicy | None = None,
    nonce: bytes | None = None,
) -> AttestationDocument:
    """Verify signature, chain to ``root``, PCR ``policy`` and ``nonce``.

    ``at`` is the moment every certificate must be valid at (default now). Returns
    the parsed document only when every check passed.
    """
    when = _moment(at)
    cose = _decode_cose(document)
    _check_algorithm(cose.protected)
    doc = _parse_payload(cose.payload)
    _check_chain(doc, root=root, at=when)
    _check_signature(cose, doc.certificate)
    if not doc.pcrs:
        raise AttestationError("The attestation document carries no PCRs; reject it.")
    if policy is not None:
        _check_policy(doc.pcrs, policy)
    if nonce is not None:
        _check_nonce(doc.nonce, nonce)
    return doc


def load_root(path: Path | None = None) -> x509.Certificate:
    """Load a PEM root certificate; by default the bundled AWS Nitro Enclaves root."""
    source = path or AWS_NITRO_ROOT_PATH
    try:
        return x509.load_pem_x509_certificate(source.read_bytes())
    except (OSError, ValueError) as exc:
        raise AttestationError(
            f"Cannot load the attestation root certificate from {source}: {exc}; "
            "point to a readable PEM certificate."
        ) from exc


def recipient_public_key(doc: AttestationDocument) -> RSAPublicKey:
    """The RSA key an enclave put in its document for KMS to encrypt to."""
    if doc.public_key is None:
        raise AttestationError(
            "The attestation document has no public_key; the enclave must attest "
            "with its RSA public key to receive data keys."
        )
    try:
        key = load_der_public_key(doc.public_key)
    except (ValueError, TypeError) as exc:
        raise AttestationError(
            f"The public_key in the attestation document is not a DER "
            f"SubjectPublicKeyInfo ({len(doc.public_key)} bytes); attest with one."
        ) from exc
    if not isinstance(key, RSAPublicKey):
        raise AttestationError(
            f"The public_key in the attestation document is {type(key).__name__}, "
            "not RSA; attest with an RSA public key."
        )
    return key


def _moment(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise InternalError(f"Verification time {at} is naive; pass an aware datetime.")
    return at


def _decode_cbor(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error, not ignored."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (
        cbor2.CBORError,
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise AttestationError(f"The {what} is not valid CBOR: {exc}.") from exc
    if stream.tell() != len(data):
        raise AttestationError(
            f"The {what} has {len(data) - stream.tell()} bytes after its CBOR item; "
            "send exactly one item."
        )
    return value


def _decode_cose(document: bytes) -> _CoseSign1:
    if not 0 < len(document) <= MAX_DOCUMENT_SIZE:
        raise AttestationError(
            f"The attestation document is {len(document)} bytes, outside "
            f"1..{MAX_DOCUMENT_SIZE}; send the document the NSM returned."
        )
    item = _decode_cbor(document, "attestation document")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise AttestationError(
                f"The attestation document has CBOR tag {item.tag}, expected "
                f"{COSE_SIGN1_TAG} (COSE_Sign1) or no tag."
            )
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise AttestationError(
            "The attestation document is not a COSE_Sign1 array of four items."
        )
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise AttestationError(
            "The COSE_Sign1 headers are malformed: expected a protected bstr and an "
            "unprotected map."
        )
    if not isinstance(payload, bytes) or not 0 < len(payload) <= MAX_PAYLOAD_SIZE:
        raise AttestationError(
            f"The COSE_Sign1 payload must be a bstr of 1..{MAX_PAYLOAD_SIZE} bytes."
        )
    if not isinstance(signature, bytes):
        raise AttestationError("The COSE_Sign1 signature is not a bstr.")
    return _CoseSign1(protected=protected, payload=payload, signature=signature)


def _check_algorithm(protected: bytes) -> None:
    header = _decode_cbor(protected, "COSE protected header") if protected else {}
    alg = header.get(COSE_HEADER_ALG) if isinstance(header, Mapping) else None
    if alg != COSE_ALG_ES384:
        raise AttestationError(
            f"The COSE algorithm is {alg!r}, expected {COSE_ALG_ES384} (ES384)."
        )


def _parse_payload(payload: bytes) -> AttestationDocument:
    fields = _decode_cbor(payload, "attestation payload")
    if not isinstance(fields, Mapping):
        raise AttestationError("The attestation payload is not a CBOR map.")
    module_id = _require(fields, "module_id", str)
    if not module_id:
        raise AttestationError("The attestation payload has an empty module_id.")
    digest = _require(fields, "digest", str)
    if digest != "SHA384":
        raise AttestationError(f"The PCR digest is {digest!r}, expected 'SHA384'.")
    return AttestationDocument(
        module_id=module_id,
        digest=digest,
        timestamp=_timestamp(_require(fields, "timestamp", int)),
        pcrs=_pcrs(_require(fields, "pcrs", Mapping)),
        certificate=_certificate(_require(fields, "certificate", bytes), "certificate"),
        cabundle=_cabundle(_require(fields, "cabundle", list | tuple)),
        public_key=_optional_bytes(fields, "public_key", 1, MAX_PUBLIC_KEY_SIZE),
        user_data=_optional_bytes(fields, "user_data", 0, MAX_USER_DATA_SIZE),
        nonce=_optional_bytes(fields, "nonce", 0, MAX_NONCE_SIZE),
        payload=payload,
    )


def _require(fields: Mapping[Any, Any], name: str, kind: Any) -> Any:
    value = fields.get(name)
    # bool is an int in Python but a distinct CBOR simple value.
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise AttestationError(
            f"The attestation payload field {name} is missing or has type "
            f"{type(value).__name__}."
        )
    return value


def _timestamp(value: int) -> datetime:
    if not 0 < value < _MAX_TIMESTAMP_MS:
        raise AttestationError(f"The attestation timestamp {value} is out of range.")
    return _EPOCH + timedelta(milliseconds=value)


def _pcrs(value: Mapping[Any, Any]) -> Mapping[int, bytes]:
    if not 1 <= len(value) <= MAX_PCRS:
        raise AttestationError(
            f"The attestation document has {len(value)} PCRs, expected 1..{MAX_PCRS}."
        )
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise AttestationError(f"PCR index {index!r} is not an integer.")
        if not 0 <= index < MAX_PCRS:
            raise AttestationError(f"PCR index {index} is outside 0..{MAX_PCRS - 1}.")
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_SIZES:
            raise AttestationError(f"PCR{index} is not a bstr of 32, 48 or 64 bytes.")
        pcrs[index] = pcr
    return MappingProxyType(dict(sorted(pcrs.items())))


def _certificate(der: bytes, what: str) -> x509.Certificate:
    if not 1 <= len(der) <= MAX_CERTIFICATE_SIZE:
        raise AttestationError(
            f"The {what} is {len(der)} bytes, outside 1..{MAX_CERTIFICATE_SIZE}."
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        # The library parses lazily: read every part verification uses now, so a
        # malformed certificate fails here rather than deep inside the checks.
        _ = (cert.subject, cert.issuer, cert.extensions, cert.not_valid_after_utc)
        _ = (
            cert.not_valid_before_utc,
            cert.public_key(),
            cert.signature_hash_algorithm,
        )
    except _CERTIFICATE_ERRORS as exc:
        raise AttestationError(f"The {what} is not a DER certificate: {exc}.") from exc
    if cert.serial_number <= 0:
        raise AttestationError(
            f"The {what} has serial number {cert.serial_number}; RFC 5280 forbids it."
        )
    return cert


def _cabundle(entries: Sequence[Any]) -> tuple[x509.Certificate, ...]:
    if not entries:
        raise AttestationError("The attestation cabundle is empty.")
    bundle = []
    for position, der in enumerate(entries):
        if not isinstance(der, bytes):
            raise AttestationError(f"cabundle[{position}] is not a bstr.")
        bundle.append(_certificate(der, f"cabundle[{position}]"))
    return tuple(bundle)


def _optional_bytes(
    fields: Mapping[Any, Any], name: str, low: int, high: int
) -> bytes | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise AttestationError(
            f"The attestation field {name} is {size} bytes, expected a bstr of "
            f"{low}..{high} bytes."
        )
    return value


def _check_chain(
    doc: AttestationDocument, *, root: x509.Certificate, at: datetime
) -> None:
    """Walk leaf -> cabundle[-1] -> ... -> cabundle[0], which must be ``root``."""
    if doc.cabundle[0].public_bytes(Encoding.DER) != root.public_bytes(Encoding.DER):
        raise AttestationError(
            f"cabundle[0] is {doc.cabundle[0].subject.rfc4514_string()}, not the "
            f"pinned root {root.subject.rfc4514_string()}; the document comes from "
            "another PKI."
        )
    chain = [doc.certificate, *reversed(doc.cabundle)]
    for cert in chain:
        _check_validity(cert, at)
    for depth, (child, issuer) in enumerate(itertools.pairwise(chain)):
        _check_issuer(issuer, cas_below=depth)
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationError(
                f"{_name(child)} is not issued by {_name(issuer)} "
                f"({exc or 'bad signature'}); the cabundle does not chain."
            ) from exc


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{_name(cert)} is valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}."
        )


def _check_issuer(issuer: x509.Certificate, *, cas_below: int) -> None:
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise AttestationError(f"{_name(issuer)} issues certificates but is not a CA.")
    limit = constraints.value.path_length
    if limit is not None and cas_below > limit:
        raise AttestationError(
            f"{_name(issuer)} allows {limit} CAs below it, the chain has {cas_below}."
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise AttestationError(f"{_name(issuer)} may not sign certificates.")


def _check_signature(cose: _CoseSign1, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(f"{_name(leaf)} does not hold a P-384 key.")
    if len(cose.signature) != ES384_SIGNATURE_SIZE:
        raise AttestationError(
            f"The COSE signature is {len(cose.signature)} bytes, expected "
            f"{ES384_SIGNATURE_SIZE} (ES384 r||s)."
        )
    # COSE carries raw r||s; the library verifies DER-encoded signatures.
    half = ES384_SIGNATURE_SIZE // 2
    r = int.from_bytes(cose.signature[:half], "big")
    s = int.from_bytes(cose.signature[half:], "big")
    to_be_signed = cbor2.dumps(["Signature1", cose.protected, b"", cose.payload])
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise AttestationError(
            f"The COSE signature does not verify with the key of {_name(leaf)}; the "
            "document was altered or signed by another key."
        ) from exc


def _check_policy(pcrs: Mapping[int, bytes], policy: PcrPolicy) -> None:
    missing = sorted(set(policy.required) - set(pcrs))
    if missing:
        names = ", ".join(f"PCR{index}" for index in missing)
        raise AttestationError(f"The attestation document lacks required {names}.")
    if not policy.allow_debug:
        for index in DEBUG_MODE_PCRS:
            if index in pcrs and not any(pcrs[index]):
                raise AttestationError(
                    f"PCR{index} is all zeros, so the enclave runs in debug mode; "
                    "run it without --debug-mode or allow debug explicitly."
                )
    for index, expected in sorted(policy.approved.items()):
        actual = pcrs.get(index)
        if actual is None:
            raise AttestationError(
                f"PCR{index} is approved but absent from the document."
            )
        if not hmac.compare_digest(actual, expected):
            raise AttestationError(
                f"PCR{index} is {_short(actual)}, the approved value is "
                f"{_short(expected)}."
            )


def _check_nonce(actual: bytes | None, expected: bytes) -> None:
    if actual is None or not hmac.compare_digest(actual, expected):
        shown = "absent" if actual is None else _short(actual)
        raise AttestationError(
            f"The document's nonce is {shown}, not the nonce {_short(expected)} this "
            "verifier issued; request a fresh document."
        )


def _name(cert: x509.Certificate) -> str:
    return f"certificate {cert.subject.rfc4514_string()!r}"


def _short(value: bytes) -> str:
    text = value.hex()
    return text if len(text) <= 16 else f"{text[:16]}…"
