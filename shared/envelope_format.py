"""The sealed-object format: header, chunk framing and the per-chunk AEAD.

A sealed object is one header followed by AES-256-GCM chunks::

    b"OBSC" | version (1 byte) | map length (u32 BE) | canonical CBOR map
    chunk 0 | chunk 1 | ... | final chunk

Each chunk is the ciphertext of ``chunk_size`` plaintext bytes plus its 16-byte tag,
except the final one, whose plaintext is always strictly shorter than
``chunk_size`` (possibly empty). A reader therefore knows from a chunk's length
whether it is final, and a stream that ends after a full-size chunk is truncated.

The nonce of chunk ``i`` is the object's random 8-byte prefix followed by ``i`` as
a 4-byte big-endian counter. The associated data of chunk ``i`` is
``SHA-256(header bytes) || i (u64 BE) || final (1 byte)``, which ties every chunk to
its position, to the end of the object and to this very header.

Key hygiene, said plainly: the cipher objects here copy the data key into a
bytearray, build the AESGCM context from it and zero the copy (and a bytearray key
handed in) at once. Python cannot promise more than that: a key that arrived as
``bytes`` (from KMS, from a ``DataKey``) is immutable and is freed, not wiped, when
its last reference goes; OpenSSL holds its own expanded key inside the cipher
context until the cipher object is collected.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, NoReturn

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import CallerError, IntegrityError, InternalError
from shared.keys import EncryptionContext

BytesLike = bytes | bytearray | memoryview

MAGIC = b"OBSC"
FORMAT_VERSION = 1
AEAD_NAME = "AES-256-GCM"
NONCE_SCHEME = "prefix64-counter32"
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
MAX_CHUNKS = 2**32
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_HEADER_MAP_SIZE = 64 * 1024
MAX_KEY_ID_LENGTH = 2048

_PREAMBLE = struct.Struct(">4sBI")
PREAMBLE_SIZE = _PREAMBLE.size
_FIELDS = frozenset(
    {
        "aead",
        "chunk_size",
        "ciphertext_blob",
        "encryption_context",
        "key_id",
        "nonce_prefix",
        "nonce_scheme",
    }
)


def check_chunk_size(chunk_size: int) -> None:
    """Refuse chunk sizes outside the format's range, before any key is made."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise CallerError(f"chunk size must be an integer, got {chunk_size!r}.")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise CallerError(
            f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
            " bytes; pick a size in that range."
        )


def check_context(context: Mapping[Any, Any]) -> None:
    """An encryption context is a map of text to text, as KMS requires."""
    for name, value in context.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise CallerError(
                f"encryption context entry {name!r} is not text to text;"
                " use str keys and str values."
            )


@dataclass(frozen=True, eq=True)
class EnvelopeHeader:
    """What a reader needs before the first chunk: who holds the key, and how."""

    key_id: str
    ciphertext_blob: bytes = field(repr=False)
    encryption_context: Mapping[str, str]
    chunk_size: int
    nonce_prefix: bytes = field(repr=False)

    def __post_init__(self) -> None:
        key_id = self.key_id
        if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_LENGTH:
            raise CallerError(
                f"key id {key_id!r} must be 1..{MAX_KEY_ID_LENGTH} characters."
            )
        if not isinstance(self.ciphertext_blob, bytes) or not self.ciphertext_blob:
            raise CallerError("ciphertext blob must be non-empty bytes.")
        if not isinstance(self.encryption_context, Mapping):
            raise CallerError("encryption context must be a map of text to text.")
        check_context(self.encryption_context)
        check_chunk_size(self.chunk_size)
        prefix = self.nonce_prefix
        if not isinstance(prefix, bytes) or len(prefix) != NONCE_PREFIX_SIZE:
            raise CallerError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes.")
        frozen = MappingProxyType(dict(self.encryption_context))
        object.__setattr__(self, "encryption_context", frozen)

    @classmethod
    def new(
        cls,
        key_id: str,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> EnvelopeHeader:
        """A header for a new object, with a fresh random nonce prefix."""
        prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
        return cls(key_id, ciphertext_blob, context, chunk_size, prefix)

    def encode(self) -> bytes:
        """The exact header bytes; chunks authenticate their SHA-256."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        body = cbor2.dumps(
            {
                "aead": AEAD_NAME,
                "chunk_size": self.chunk_size,
                "ciphertext_blob": self.ciphertext_blob,
                "encryption_context": dict(self.encryption_context),
                "key_id": self.key_id,
                "nonce_prefix": self.nonce_prefix,
                "nonce_scheme": NONCE_SCHEME,
            },
            canonical=True,
        )
        if len(body) > MAX_HEADER_MAP_SIZE:
            raise CallerError(
                f"envelope header would be {len(body)} bytes, over the"
                f" {MAX_HEADER_MAP_SIZE}-byte cap; shorten the encryption context."
            )
        return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the encoded header, the first part of every chunk's AAD."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def parse(cls, data: BytesLike) -> EnvelopeHeader:
        """Parse exactly one encoded header, refusing anything after it."""
        header, used = cls.read(data)
        if used != len(data):
            raise IntegrityError(
                f"envelope header is followed by {len(data) - used} unexpected"
                " bytes; pass the header alone."
            )
        return header

    @classmethod
    def read(cls, data: BytesLike) -> tuple[EnvelopeHeader, int]:
        """Parse the header at the start of ``data``; return it and its length."""
        view = memoryview(data).cast("B")
        if len(view) < PREAMBLE_SIZE:
            raise_short_preamble(view)
        map_size = parse_preamble(view[:PREAMBLE_SIZE])
        end = PREAMBLE_SIZE + map_size
        if len(view) < end:
            raise IntegrityError(
                f"envelope header is cut short: {len(view)} of {end} bytes present;"
                " the object is truncated."
            )
        return parse_header_map(view[PREAMBLE_SIZE:end]), end


def raise_short_preamble(seen: BytesLike) -> NoReturn:
    """A stream shorter than the preamble: truncated envelope, or no envelope."""
    seen = bytes(seen)
    if MAGIC.startswith(seen[: len(MAGIC)]):
        raise IntegrityError(
            f"sealed object ends after {len(seen)} bytes, inside the envelope"
            " header; the object is truncated."
        )
    raise CallerError(
        f"data does not start with the envelope magic {MAGIC!r}; it is not a"
        " sealed object."
    )


def parse_preamble(preamble: BytesLike) -> int:
    """Check magic and version; return the CBOR map length, refusing huge ones."""
    magic, version, map_size = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise CallerError(
            f"data starts with {magic!r}, not the envelope magic {MAGIC!r};"
            " it is not a sealed object."
        )
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"envelope format version {version} is not supported; this reader"
            f" understands version {FORMAT_VERSION} only."
        )
    if not 0 < map_size <= MAX_HEADER_MAP_SIZE:
        raise IntegrityError(
            f"envelope header claims a {map_size}-byte map; the limit is"
            f" 1..{MAX_HEADER_MAP_SIZE} bytes."
        )
    return int(map_size)


class _NoTags(Mapping[int, Any]):
    """A semantic-decoder table that refuses every CBOR tag: headers have none."""

    def __getitem__(self, tag: int) -> Any:
        def refuse(*_: object) -> Any:
            raise ValueError(f"CBOR tag {tag} is not allowed in an envelope header")

        return refuse

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse_tag(tag: Any, *_: object) -> Any:
    raise ValueError(f"CBOR tag {tag.tag} is not allowed in an envelope header")


def _decode_map(raw: memoryview) -> dict[str, Any]:
    try:
        decoded = cbor2.loads(
            raw,
            tag_hook=_refuse_tag,
            semantic_decoders=_NoTags(),
            max_depth=3,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as exc:
        raise IntegrityError(
            f"envelope header is not valid CBOR ({exc}); the object is damaged."
        ) from exc
    if not isinstance(decoded, dict):
        raise IntegrityError(
            f"envelope header is a CBOR {type(decoded).__name__}, not a map;"
            " the object is damaged."
        )
    return decoded


def _field(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise IntegrityError(
            f"envelope header field {name!r} is a {type(value).__name__}, not a"
            f" {kind.__name__}; the object is damaged."
        )
    return value


def parse_header_map(raw: memoryview) -> EnvelopeHeader:
    """Decode and validate the CBOR map; it must be canonical and complete."""
    fields = _decode_map(raw)
    names = set(fields)
    if names != _FIELDS:
        raise IntegrityError(
            f"envelope header fields differ from the format: missing"
            f" {sorted(_FIELDS - names)}, unknown {sorted(map(str, names - _FIELDS))}."
        )
    aead = _field(fields, "aead", str)
    if aead != AEAD_NAME:
        raise IntegrityError(
            f"envelope AEAD {aead!r} is not supported; only {AEAD_NAME!r} is."
        )
    scheme = _field(fields, "nonce_scheme", str)
    if scheme != NONCE_SCHEME:
        raise IntegrityError(
            f"envelope nonce scheme {scheme!r} is not supported; only"
            f" {NONCE_SCHEME!r} is."
        )
    try:
        header = EnvelopeHeader(
            key_id=_field(fields, "key_id", str),
            ciphertext_blob=_field(fields, "ciphertext_blob", bytes),
            encryption_context=_field(fields, "encryption_context", dict),
            chunk_size=_field(fields, "chunk_size", int),
            nonce_prefix=_field(fields, "nonce_prefix", bytes),
        )
        canonical = header.encode()[PREAMBLE_SIZE:]
    except CallerError as exc:
        raise IntegrityError(f"envelope header is invalid: {exc}") from exc
    # One header, one byte string: anything cbor2 would encode differently
    # (non-shortest integers, unsorted keys, trailing bytes) is refused.
    if canonical != raw:
        raise IntegrityError(
            "envelope header map is not in canonical CBOR form; the object is damaged."
        )
    return header


def _cipher(key: bytes | bytearray) -> AESGCM:
    """Build AESGCM from a scratch copy of the key and wipe the copy at once."""
    scratch = bytearray(key)
    try:
        if len(scratch) != KEY_SIZE:
            raise InternalError(
                f"data key is {len(scratch)} bytes; the envelope needs"
                f" {KEY_SIZE}-byte AES-256 keys."
            )
        return AESGCM(scratch)
    finally:
        scratch[:] = bytes(len(scratch))
        if isinstance(key, bytearray):
            key[:] = bytes(len(key))


class _ChunkCipher:
    """State both directions share: the cipher, the header digest, the counter."""

    __slots__ = ("_aead", "_chunk_size", "_digest", "_finished", "_index", "_prefix")

    def __init__(self, header: EnvelopeHeader, key: bytes | bytearray) -> None:
        self._aead = _cipher(key)
        self._chunk_size = header.chunk_size
        self._digest = header.digest
        self._prefix = header.nonce_prefix
        self._index = 0
        self._finished = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(chunk_size={self._chunk_size},"
            f" index={self._index}, finished={self._finished})"
        )

    @property
    def index(self) -> int:
        """Index of the next chunk."""
        return self._index

    @property
    def finished(self) -> bool:
        """Whether the final chunk has gone through."""
        return self._finished

    def _nonce_and_aad(self, final: bool) -> tuple[bytes, bytes]:
        index = self._index
        nonce = self._prefix + index.to_bytes(4, "big")
        aad = self._digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")
        return nonce, aad

    def _advance(self, final: bool) -> None:
        self._index += 1
        self._finished = final


class ChunkSealer(_ChunkCipher):
    """Seals one object's chunks in order; the counter only moves forward."""

    __slots__ = ()

    def seal_chunk(self, data: BytesLike, final: bool) -> bytes:
        """Seal the next chunk: ``chunk_size`` bytes, or fewer when final."""
        nonce, aad = self._check(len(data), final)
        sealed = self._aead.encrypt(nonce, data, aad)
        self._advance(final)
        return sealed

    def seal_chunk_into(self, data: BytesLike, final: bool, out: memoryview) -> None:
        """Like ``seal_chunk`` but writes into ``out``, exactly len(data)+16 bytes."""
        nonce, aad = self._check(len(data), final)
        self._aead.encrypt_into(nonce, data, aad, out)
        self._advance(final)

    def _check(self, size: int, final: bool) -> tuple[bytes, bytes]:
        if self._finished:
            raise CallerError("the final chunk was already sealed; start a new object.")
        if self._index >= MAX_CHUNKS:
            raise CallerError(
                f"object needs more than {MAX_CHUNKS} chunks; use a larger chunk size."
            )
        if final and size >= self._chunk_size:
            raise CallerError(
                f"final chunk has {size} bytes; it must be shorter than the chunk"
                f" size {self._chunk_size} (seal a full chunk, then an empty final)."
            )
        if not final and size != self._chunk_size:
            raise CallerError(
                f"chunk {self._index} has {size} bytes; non-final chunks must be"
                f" exactly {self._chunk_size}."
            )
        return self._nonce_and_aad(final)


class ChunkOpener(_ChunkCipher):
    """Opens one object's chunks in order, failing on the first bad one."""

    __slots__ = ()

    def open_chunk(self, sealed: BytesLike, final: bool) -> bytes:
        """Authenticate and decrypt the next chunk."""
        nonce, aad = self._check(len(sealed), final)
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise self._tampered() from exc
        self._advance(final)
        return plaintext

    def open_chunk_into(self, sealed: BytesLike, final: bool, out: memoryview) -> None:
        """Like ``open_chunk`` but writes into ``out``; ``out`` is wiped on failure."""
        nonce, aad = self._check(len(sealed), final)
        try:
            self._aead.decrypt_into(nonce, sealed, aad, out)
        except InvalidTag as exc:
            out[:] = bytes(len(out))
            raise self._tampered() from exc
        self._advance(final)

    def _tampered(self) -> IntegrityError:
        return IntegrityError(
            f"chunk {self._index} failed authentication; the object was tampered"
            " with, truncated, reordered, spliced or has trailing bytes."
        )

    def _check(self, size: int, final: bool) -> tuple[bytes, bytes]:
        if self._finished:
            raise IntegrityError(
                f"{size} bytes follow the final chunk {self._index - 1}; the object"
                " has trailing data."
            )
        if self._index >= MAX_CHUNKS:
            raise IntegrityError(f"chunk {self._index} is past the {MAX_CHUNKS} limit.")
        record = self._chunk_size + TAG_SIZE
        if final and not TAG_SIZE <= size < record:
            raise IntegrityError(
                f"final chunk {self._index} is {size} bytes; it must be"
                f" {TAG_SIZE}..{record - 1}, so the object is truncated or damaged."
            )
        if not final and size != record:
            raise IntegrityError(
                f"chunk {self._index} is {size} bytes; non-final chunks are"
                f" exactly {record}, so the object is truncated or damaged."
            )
        return self._nonce_and_aad(final)
