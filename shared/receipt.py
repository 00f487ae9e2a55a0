"""Prediction receipts: an attestation document bound to one job's record.

The enclave hashes a canonical record of the job id, the SHA-256 of the sealed
input, the SHA-256 of the model plaintext, the SHA-256 of the sealed result and the
caller's nonce, and asks the NSM for a document whose ``user_data`` is that hash
and whose ``nonce`` is the caller's nonce. Anyone holding the pinned root and the
approved PCR0 can check a receipt offline.

Nitro leaf certificates live a few hours, so a receipt is checked against the
chain as it stood at the document's own timestamp, not at the time of reading.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

import cbor2
from cryptography import x509

from shared.attestation import (
    AttestationDocument,
    PcrPolicy,
    parse_attestation,
    verify_attestation,
)
from shared.errors import AttestationError, CallerError

RECEIPT_FORMAT = "obscura-receipt/1"
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ReceiptRecord:
    job_id: str
    sealed_input_sha256: str
    model_sha256: str
    sealed_result_sha256: str
    nonce: str

    def __post_init__(self) -> None:
        for name in ("sealed_input_sha256", "model_sha256", "sealed_result_sha256"):
            value = getattr(self, name)
            if len(value) != 64 or not set(value) <= _HEX64:
                raise CallerError(f"{name} must be 64 lowercase hex digits.")
        if not self.job_id:
            raise CallerError("A receipt record needs a job id.")

    def canonical(self) -> bytes:
        """Deterministic CBOR of the record; its SHA-256 is the document's user data."""
        fields: dict[str, Any] = {"format": RECEIPT_FORMAT, **asdict(self)}
        return bytes(cbor2.dumps(fields, canonical=True))

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def nonce_bytes(self) -> bytes:
        return bytes.fromhex(self.nonce)


@dataclass(frozen=True)
class Receipt:
    record: ReceiptRecord
    attestation_document: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "record": asdict(self.record),
            "attestation_document": base64.b64encode(
                self.attestation_document
            ).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        try:
            if data["format"] != RECEIPT_FORMAT:
                raise CallerError(
                    f"Receipt format {data['format']!r} is not {RECEIPT_FORMAT!r}."
                )
            record = ReceiptRecord(**data["record"])
            document = base64.b64decode(data["attestation_document"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise CallerError(f"The receipt is malformed: {exc}.") from exc
        return cls(record=record, attestation_document=document)

    @classmethod
    def loads(cls, text: str | bytes) -> Receipt:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CallerError(f"The receipt is not JSON: {exc}.") from exc


def verify_receipt(
    receipt: Receipt,
    *,
    root: x509.Certificate,
    pcr0: bytes,
    sealed_result_sha256: str | None = None,
    allow_debug: bool = False,
) -> AttestationDocument:
    """Check the document, its PCR0, and that it signs exactly this record."""
    stamped = parse_attestation(receipt.attestation_document).timestamp
    policy = PcrPolicy(
        approved={0: pcr0}, required=frozenset({0}), allow_debug=allow_debug
    )
    doc = verify_attestation(
        receipt.attestation_document,
        root=root,
        at=stamped,
        policy=policy,
        nonce=receipt.record.nonce_bytes(),
    )
    if doc.user_data is None or not hmac.compare_digest(
        doc.user_data, receipt.record.digest()
    ):
        raise AttestationError(
            "The receipt's record does not match the attested user data; the record"
            " was altered or belongs to another document."
        )
    if sealed_result_sha256 is not None and not hmac.compare_digest(
        sealed_result_sha256, receipt.record.sealed_result_sha256
    ):
        raise AttestationError(
            f"The sealed result hashes to {sealed_result_sha256[:16]}…, the receipt"
            f" names {receipt.record.sealed_result_sha256[:16]}…."
        )
    return doc
