"""The Nitro Secure Module seam and the /dev/nsm device client.

The enclave worker asks an ``Nsm`` for attestation documents. In an enclave that is
``DeviceNsm``: the NSM driver takes one ioctl whose argument holds two iovecs, a
CBOR request the module reads and a buffer it writes its CBOR response into.
Requests and responses are externally tagged maps such as
``{"Attestation": {"user_data": ..., "nonce": ..., "public_key": ...}}`` answered by
``{"Attestation": {"document": ...}}`` or ``{"Error": "<code>"}``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import cbor2

from shared.errors import (
    CallerError,
    DependencyError,
    PermanentDependencyError,
    RetryableDependencyError,
)
from shared.logging import get_logger

NSM_DEVICE = Path("/dev/nsm")
NSM_MAGIC = 0x0A
NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000
MAX_USER_DATA_SIZE = 512
MAX_NONCE_SIZE = 512
MAX_PUBLIC_KEY_SIZE = 1024

# Error codes the module reports that may clear on their own; the rest mean the
# request itself is wrong and retrying it cannot help.
_RETRYABLE_CODES = frozenset({"InternalError"})
_RETRYABLE_ERRNOS = frozenset({errno.EINTR, errno.EAGAIN, errno.EBUSY, errno.ENOMEM})

log = get_logger(__name__)

IoctlCall = Callable[[int, int, Any], Any]


class Nsm(Protocol):
    def attest(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (COSE_Sign1) over these fields."""
        ...


class _NsmIovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _NsmIovec), ("response", _NsmIovec)]


def _iowr(magic: int, number: int, size: int) -> int:
    """Linux ``_IOWR``: direction read|write, argument size, type and number."""
    read_write = 3
    return (read_write << 30) | (size << 16) | (magic << 8) | number


NSM_IOCTL_RAW = _iowr(NSM_MAGIC, 0, ctypes.sizeof(_NsmRaw))


def encode_attestation_request(
    *,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
) -> bytes:
    """CBOR for an ``Attestation`` request; absent fields are sent as null."""
    for name, value, limit in (
        ("user_data", user_data, MAX_USER_DATA_SIZE),
        ("nonce", nonce, MAX_NONCE_SIZE),
        ("public_key", public_key, MAX_PUBLIC_KEY_SIZE),
    ):
        if value is not None and len(value) > limit:
            raise CallerError(
                f"Attestation {name} is {len(value)} bytes, the NSM accepts at most "
                f"{limit}; send a digest instead."
            )
    fields = {"user_data": user_data, "nonce": nonce, "public_key": public_key}
    return cbor2.dumps({"Attestation": fields})


def encode_describe_pcr_request(index: int) -> bytes:
    """CBOR for a ``DescribePCR`` request."""
    return cbor2.dumps({"DescribePCR": {"index": index}})


def decode_response(raw: bytes, expected: str) -> dict[str, Any]:
    """The fields of an ``expected`` response, or the NSM error translated."""
    try:
        message = cbor2.loads(raw)
    except (cbor2.CBORError, ValueError, TypeError) as exc:
        raise PermanentDependencyError(
            f"The NSM answered with {len(raw)} bytes that are not CBOR; the device "
            "or driver is faulty."
        ) from exc
    if not isinstance(message, dict) or len(message) != 1:
        raise PermanentDependencyError(
            f"The NSM answered with {type(message).__name__}, not a one-entry map."
        )
    ((kind, body),) = message.items()
    if kind == "Error":
        raise _error_for_code(str(body), expected)
    if kind != expected or not isinstance(body, dict):
        raise PermanentDependencyError(
            f"The NSM answered {kind!r} to a {expected!r} request."
        )
    return body


def decode_attestation_response(raw: bytes) -> bytes:
    """The COSE document inside an ``Attestation`` response."""
    document = decode_response(raw, "Attestation").get("document")
    if not isinstance(document, bytes) or not document:
        raise PermanentDependencyError(
            "The NSM Attestation response has no document bytes."
        )
    return document


def _error_for_code(code: str, request: str) -> DependencyError:
    message = f"The NSM refused the {request} request with {code}."
    if code in _RETRYABLE_CODES:
        return RetryableDependencyError(message)
    return PermanentDependencyError(message)


class DeviceNsm:
    """``Nsm`` over the enclave's /dev/nsm character device."""

    def __init__(self, fd: int, *, ioctl: IoctlCall = fcntl.ioctl) -> None:
        self._fd = fd
        self._ioctl = ioctl

    @classmethod
    def open(cls, path: Path = NSM_DEVICE, *, ioctl: IoctlCall = fcntl.ioctl) -> Self:
        """Open the device; only a process inside a Nitro Enclave has one."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise PermanentDependencyError(
                f"The NSM device {path} does not exist; run inside a Nitro Enclave, "
                "or use the simulated NSM on a development machine."
            ) from exc
        except OSError as exc:
            raise PermanentDependencyError(
                f"Cannot open the NSM device {path}: {exc.strerror}; run the worker "
                "as a user that may read and write it."
            ) from exc
        log.info("nsm_opened", device=str(path))
        return cls(fd, ioctl=ioctl)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def attest(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        request = encode_attestation_request(
            user_data=user_data, nonce=nonce, public_key=public_key
        )
        return decode_attestation_response(self._call(request))

    def describe_pcr(self, index: int) -> bytes:
        """The current value of PCR ``index`` as the module reports it."""
        body = decode_response(
            self._call(encode_describe_pcr_request(index)), "DescribePCR"
        )
        data = body.get("data")
        if not isinstance(data, bytes):
            raise PermanentDependencyError(
                f"The NSM DescribePCR{index} has no data bytes."
            )
        return data

    def _call(self, request: bytes) -> bytes:
        """One request/response round trip through the raw ioctl."""
        if self._fd < 0:
            raise PermanentDependencyError("The NSM device is closed; open it again.")
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise CallerError(
                f"The NSM request is {len(request)} bytes, above the driver's "
                f"{NSM_REQUEST_MAX_SIZE}; send smaller fields."
            )
        # Both buffers must stay referenced until the ioctl returns: the struct
        # only holds their addresses.
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        message = _NsmRaw(
            _NsmIovec(ctypes.addressof(request_buffer), len(request)),
            _NsmIovec(ctypes.addressof(response_buffer), NSM_RESPONSE_MAX_SIZE),
        )
        try:
            self._ioctl(self._fd, NSM_IOCTL_RAW, message)
        except OSError as exc:
            kind = (
                RetryableDependencyError
                if exc.errno in _RETRYABLE_ERRNOS
                else PermanentDependencyError
            )
            raise kind(f"The NSM ioctl failed: {exc.strerror or exc}.") from exc
        # The driver rewrites response.len to the size it actually filled.
        size = min(int(message.response.len), NSM_RESPONSE_MAX_SIZE)
        return response_buffer.raw[:size]
