"""The key-service seam: what sealing and unsealing need from KMS.

The aiobotocore adapter lives in ``shared.kms``; tests may use an in-memory fake.
A ``Recipient`` is an enclave's proof of identity: its attestation document (which
embeds the RSA public key) and the matching private key, which never leaves the
enclave. With a recipient, KMS returns the data key only as
``CiphertextForRecipient`` and the key service unwraps it locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

EncryptionContext = Mapping[str, str]


@dataclass(frozen=True)
class Recipient:
    attestation_document: bytes
    private_key: RSAPrivateKey = field(repr=False)


@dataclass(frozen=True)
class DataKey:
    """A fresh AES-256 data key: plaintext for immediate use, blob to store."""

    key_id: str
    ciphertext_blob: bytes
    plaintext: bytes = field(repr=False)


class KeyService(Protocol):
    async def generate_data_key(
        self,
        key_id: str,
        context: EncryptionContext,
        *,
        recipient: Recipient | None = None,
    ) -> DataKey:
        """``GenerateDataKey`` with ``KeySpec=AES_256``."""
        ...

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        *,
        key_id: str | None = None,
        recipient: Recipient | None = None,
    ) -> bytes:
        """``Decrypt`` of a data key blob; returns the plaintext data key."""
        ...
