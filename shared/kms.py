"""KMS on aiobotocore: ``GenerateDataKey`` and ``Decrypt``, with and without Recipient.

The same code talks to AWS KMS and to the local attested stand-in; only
``endpoint_url`` differs. botocore's own retries are switched off so that one policy
(``shared.retry``) decides, with jitter and a finite budget, and only for errors the
translation below marks retryable.

With a ``Recipient`` KMS never returns ``Plaintext``: the data key comes back as
``CiphertextForRecipient`` (CMS EnvelopedData to the enclave's RSA key) and is
opened here, inside the enclave.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from shared.aws import Credentials as Credentials
from shared.aws import open_client
from shared.cms import open_ciphertext_for_recipient
from shared.errors import (
    DependencyError,
    PermanentDependencyError,
    Reason,
    RetryableDependencyError,
)
from shared.keys import DataKey, EncryptionContext, Recipient
from shared.retry import RetryPolicy, with_retry

T = TypeVar("T")

DATA_KEY_BYTES = 32
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"

_PERMANENT_CODES: dict[str, Reason] = {
    "AccessDeniedException": Reason.ACCESS_DENIED,
    "UnrecognizedClientException": Reason.ACCESS_DENIED,
    "InvalidSignatureException": Reason.ACCESS_DENIED,
    "IncompleteSignature": Reason.ACCESS_DENIED,
    "DisabledException": Reason.ACCESS_DENIED,
    "KMSInvalidStateException": Reason.ACCESS_DENIED,
    "InvalidKeyUsageException": Reason.ACCESS_DENIED,
    "InvalidCiphertextException": Reason.INVALID_CIPHERTEXT,
    "IncorrectKeyException": Reason.INVALID_CIPHERTEXT,
    "InvalidGrantTokenException": Reason.INVALID_CIPHERTEXT,
    "NotFoundException": Reason.NOT_FOUND,
    "ValidationException": Reason.INVALID_REQUEST,
    "InvalidParameterValue": Reason.INVALID_REQUEST,
}
_RETRYABLE_CODES: dict[str, Reason] = {
    "ThrottlingException": Reason.THROTTLED,
    "LimitExceededException": Reason.THROTTLED,
    "RequestLimitExceeded": Reason.THROTTLED,
    "TooManyRequestsException": Reason.THROTTLED,
    "DependencyTimeoutException": Reason.TIMEOUT,
    "KMSInternalException": Reason.UNAVAILABLE,
    "KeyUnavailableException": Reason.UNAVAILABLE,
    "ExpiredTokenException": Reason.ACCESS_DENIED,
}


@dataclass(frozen=True)
class KmsEndpoint:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    # Inside the enclave: the endpoint's host name leads to the local tunnel.
    loopback_host: str | None = None


def translate_client_error(exc: ClientError, operation: str) -> DependencyError:
    """Map a KMS error code onto the error tree; unknown 5xx are retryable."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = f"KMS {operation} failed with {code}: {error.get('Message', '')}".strip()
    if code in _PERMANENT_CODES:
        return PermanentDependencyError(message, reason=_PERMANENT_CODES[code])
    if code in _RETRYABLE_CODES:
        return RetryableDependencyError(message, reason=_RETRYABLE_CODES[code])
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if status >= 500 or status == 0:
        return RetryableDependencyError(message, reason=Reason.UNAVAILABLE)
    return PermanentDependencyError(message, reason=Reason.INVALID_REQUEST)


def translate_botocore_error(exc: BotoCoreError, operation: str) -> DependencyError:
    message = f"KMS {operation} did not complete: {exc}"
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return RetryableDependencyError(message, reason=Reason.TIMEOUT)
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        return RetryableDependencyError(message, reason=Reason.UNAVAILABLE)
    return RetryableDependencyError(message, reason=Reason.UNAVAILABLE)


class AwsKeyService:
    """``shared.keys.KeyService`` over an aiobotocore KMS client."""

    def __init__(self, client: Any, *, retry: RetryPolicy | None = None) -> None:
        self._client = client
        self._retry = retry or RetryPolicy()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        endpoint: KmsEndpoint,
        credentials: Credentials | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[AwsKeyService]:
        """Open a client; without credentials botocore's default chain applies."""
        async with open_client(
            "kms",
            region=endpoint.region,
            endpoint_url=endpoint.endpoint_url,
            credentials=credentials,
            connect_timeout_s=endpoint.connect_timeout_s,
            read_timeout_s=endpoint.read_timeout_s,
            loopback_host=endpoint.loopback_host,
        ) as client:
            yield cls(client, retry=retry)

    async def generate_data_key(
        self,
        key_id: str,
        context: EncryptionContext,
        *,
        recipient: Recipient | None = None,
    ) -> DataKey:
        request: dict[str, Any] = {
            "KeyId": key_id,
            "KeySpec": "AES_256",
            "EncryptionContext": dict(context),
        }
        if recipient is not None:
            request["Recipient"] = _recipient_field(recipient)
        answer = await self._call(
            "GenerateDataKey", self._client.generate_data_key, request
        )
        plaintext = _data_key_from(answer, recipient, "GenerateDataKey")
        return DataKey(
            key_id=str(answer["KeyId"]),
            ciphertext_blob=bytes(answer["CiphertextBlob"]),
            plaintext=plaintext,
        )

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        *,
        key_id: str | None = None,
        recipient: Recipient | None = None,
    ) -> bytes:
        request: dict[str, Any] = {
            "CiphertextBlob": ciphertext_blob,
            "EncryptionContext": dict(context),
        }
        if key_id is not None:
            request["KeyId"] = key_id
        if recipient is not None:
            request["Recipient"] = _recipient_field(recipient)
        answer = await self._call("Decrypt", self._client.decrypt, request)
        return _data_key_from(answer, recipient, "Decrypt")

    async def _call(
        self,
        operation: str,
        method: Callable[..., Awaitable[dict[str, Any]]],
        request: dict[str, Any],
    ) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            try:
                return await method(**request)
            except ClientError as exc:
                raise translate_client_error(exc, operation) from exc
            except BotoCoreError as exc:
                raise translate_botocore_error(exc, operation) from exc

        return await with_retry(once, self._retry, what=f"kms.{operation}")


def _recipient_field(recipient: Recipient) -> dict[str, Any]:
    return {
        "KeyEncryptionAlgorithm": RECIPIENT_ALGORITHM,
        "AttestationDocument": recipient.attestation_document,
    }


def _data_key_from(
    answer: dict[str, Any], recipient: Recipient | None, operation: str
) -> bytes:
    """Take the data key out of a KMS answer, via the recipient if there is one."""
    if recipient is None:
        plaintext = answer.get("Plaintext")
        if not plaintext:
            raise PermanentDependencyError(
                f"KMS {operation} returned no Plaintext; the caller asked for one.",
                reason=Reason.INVALID_CIPHERTEXT,
            )
        key = bytes(plaintext)
    else:
        if answer.get("Plaintext"):
            # KMS leaves Plaintext empty when it answers for a recipient; one that
            # sends both has let the key travel outside the enclave's envelope.
            raise PermanentDependencyError(
                f"KMS {operation} returned Plaintext alongside CiphertextForRecipient;"
                " refusing a key that travelled in the clear.",
                reason=Reason.INVALID_CIPHERTEXT,
            )
        wrapped = answer.get("CiphertextForRecipient")
        if not wrapped:
            raise PermanentDependencyError(
                f"KMS {operation} returned no CiphertextForRecipient for a Recipient"
                " request; check that the endpoint supports attested requests.",
                reason=Reason.INVALID_CIPHERTEXT,
            )
        key = open_ciphertext_for_recipient(
            bytes(wrapped), recipient.private_key, plaintext_length=DATA_KEY_BYTES
        )
    if len(key) != DATA_KEY_BYTES:
        raise PermanentDependencyError(
            f"KMS {operation} returned a {len(key)}-byte data key, expected"
            f" {DATA_KEY_BYTES}; use KeySpec AES_256 keys.",
            reason=Reason.INVALID_CIPHERTEXT,
        )
    return key
