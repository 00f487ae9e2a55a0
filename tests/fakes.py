"""In-memory stand-ins for the seams in ``shared``, for unit tests.

``FakeKeyService`` behaves like KMS where tests can tell: data keys are wrapped
with AES-256-GCM under a per-key master key that never leaves the fake, the
encryption context is bound as associated data, and ``decrypt`` with another
context, another key id or a damaged blob fails with ``invalid_ciphertext``.
Every call is recorded so tests can assert what was (or was not) asked of KMS.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import PermanentDependencyError, Reason
from shared.keys import DataKey, EncryptionContext, Recipient

_BLOB_MAGIC = b"FKMS"
_NONCE_SIZE = 12
_KEY_ID_LENGTH = struct.Struct(">H")


@dataclass(frozen=True)
class KmsCall:
    """One request the fake received: which operation, key and context."""

    operation: str
    key_id: str | None
    context: Mapping[str, str]
    recipient: Recipient | None = field(default=None, repr=False)


KeyPolicy = Callable[[KmsCall], None]
"""Called before each request is served; raise to refuse it (e.g. access denied)."""


def _context_aad(key_id: str, context: EncryptionContext) -> bytes:
    canonical = json.dumps(dict(context), sort_keys=True, separators=(",", ":"))
    return key_id.encode() + b"\x00" + canonical.encode()


def _invalid(message: str) -> PermanentDependencyError:
    return PermanentDependencyError(message, reason=Reason.INVALID_CIPHERTEXT)


class FakeKeyService:
    """A ``KeyService`` holding its master keys in memory.

    Keys exist only once named (constructor or ``add_key``); an unknown key id
    fails with ``not_found`` as KMS would. ``policy`` lets a test refuse requests.
    """

    def __init__(self, *key_ids: str, policy: KeyPolicy | None = None) -> None:
        self._masters: dict[str, AESGCM] = {}
        self.calls: list[KmsCall] = []
        self.policy = policy
        for key_id in key_ids or ("alias/obscura-test",):
            self.add_key(key_id)

    def __repr__(self) -> str:
        return f"FakeKeyService(keys={sorted(self._masters)}, calls={len(self.calls)})"

    def add_key(self, key_id: str) -> str:
        self._masters[key_id] = AESGCM(AESGCM.generate_key(bit_length=256))
        return key_id

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._masters)

    def operations(self, name: str) -> list[KmsCall]:
        return [call for call in self.calls if call.operation == name]

    async def generate_data_key(
        self,
        key_id: str,
        context: EncryptionContext,
        *,
        recipient: Recipient | None = None,
    ) -> DataKey:
        self._record("GenerateDataKey", key_id, context, recipient)
        master = self._master(key_id)
        plaintext = os.urandom(32)
        nonce = os.urandom(_NONCE_SIZE)
        wrapped = master.encrypt(nonce, plaintext, _context_aad(key_id, context))
        encoded_id = key_id.encode()
        blob = (
            _BLOB_MAGIC + _KEY_ID_LENGTH.pack(len(encoded_id)) + encoded_id + nonce
        ) + wrapped
        await asyncio.sleep(0)
        return DataKey(key_id=key_id, ciphertext_blob=blob, plaintext=plaintext)

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        *,
        key_id: str | None = None,
        recipient: Recipient | None = None,
    ) -> bytes:
        self._record("Decrypt", key_id, context, recipient)
        blob_key_id, nonce, wrapped = self._split(ciphertext_blob)
        if key_id is not None and key_id != blob_key_id:
            raise _invalid(
                f"ciphertext blob was made under key {blob_key_id!r}, not {key_id!r};"
                " pass the key id it was sealed with."
            )
        master = self._master(blob_key_id)
        try:
            plaintext = master.decrypt(
                nonce, wrapped, _context_aad(blob_key_id, context)
            )
        except InvalidTag as exc:
            raise _invalid(
                "ciphertext blob does not decrypt under this encryption context;"
                " pass the context it was created with."
            ) from exc
        await asyncio.sleep(0)
        return plaintext

    def _record(
        self,
        operation: str,
        key_id: str | None,
        context: EncryptionContext,
        recipient: Recipient | None,
    ) -> None:
        call = KmsCall(operation, key_id, dict(context), recipient)
        self.calls.append(call)
        if self.policy is not None:
            self.policy(call)

    def _master(self, key_id: str) -> AESGCM:
        try:
            return self._masters[key_id]
        except KeyError:
            raise PermanentDependencyError(
                f"key {key_id!r} does not exist in the fake key service;"
                " create it with add_key first.",
                reason=Reason.NOT_FOUND,
            ) from None

    def _split(self, blob: bytes) -> tuple[str, bytes, bytes]:
        head = len(_BLOB_MAGIC) + _KEY_ID_LENGTH.size
        if len(blob) < head or not blob.startswith(_BLOB_MAGIC):
            raise _invalid(f"ciphertext blob of {len(blob)} bytes is not one of ours.")
        (id_length,) = _KEY_ID_LENGTH.unpack_from(blob, len(_BLOB_MAGIC))
        nonce_at = head + id_length
        if len(blob) < nonce_at + _NONCE_SIZE + 16:
            raise _invalid(f"ciphertext blob of {len(blob)} bytes is cut short.")
        try:
            key_id = blob[head:nonce_at].decode()
        except UnicodeDecodeError as exc:
            raise _invalid("ciphertext blob names an unreadable key id.") from exc
        nonce = blob[nonce_at : nonce_at + _NONCE_SIZE]
        return key_id, nonce, blob[nonce_at + _NONCE_SIZE :]
