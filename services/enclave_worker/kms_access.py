"""The enclave's KMS client, rebuilt whenever the proxy hands over new credentials.

The enclave has no credentials of its own: the proxy passes short-lived ones over
the link and refreshes them before they expire. What makes a key releasable to
the enclave is its attestation document, not these credentials.
"""

from __future__ import annotations

import asyncio
import contextlib

from shared.enclave_protocol import HandedCredentials
from shared.errors import Reason, RetryableDependencyError
from shared.keys import DataKey, EncryptionContext, Recipient
from shared.kms import AwsKeyService, Credentials, KmsEndpoint
from shared.logging import get_logger
from shared.retry import RetryPolicy

log = get_logger(__name__)

# Requests already under way on a replaced client get this long to finish.
_RETIRE_AFTER_S = 60.0


class EnclaveKeys:
    """A ``KeyService`` whose client follows the latest handed credentials."""

    def __init__(self, endpoint: KmsEndpoint, retry: RetryPolicy | None = None) -> None:
        self._endpoint = endpoint
        self._retry = retry or RetryPolicy(attempts=4, budget_s=15.0)
        self._current: AwsKeyService | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._retiring: dict[asyncio.Task[None], contextlib.AsyncExitStack] = {}
        self.credentials: HandedCredentials | None = None
        self.arrived = asyncio.Event()

    async def update(self, handed: HandedCredentials) -> None:
        stack = contextlib.AsyncExitStack()
        credentials = Credentials(
            handed.access_key_id, handed.secret_access_key, handed.session_token
        )
        service = await stack.enter_async_context(
            AwsKeyService.connect(self._endpoint, credentials, retry=self._retry)
        )
        old = self._stack
        self._current, self._stack, self.credentials = service, stack, handed
        self.arrived.set()
        log.info("kms credentials updated", expires=str(handed.expiration))
        if old is not None:
            task = asyncio.create_task(self._retire(old))
            self._retiring[task] = old
            task.add_done_callback(self._retiring.pop)

    async def _retire(self, stack: contextlib.AsyncExitStack) -> None:
        await asyncio.sleep(_RETIRE_AFTER_S)
        await stack.aclose()

    def _service(self) -> AwsKeyService:
        if self._current is None:
            raise RetryableDependencyError(
                "The enclave has no KMS credentials yet; the proxy hands them over"
                " after it connects.",
                reason=Reason.UNAVAILABLE,
            )
        return self._current

    async def generate_data_key(
        self,
        key_id: str,
        context: EncryptionContext,
        *,
        recipient: Recipient | None = None,
    ) -> DataKey:
        return await self._service().generate_data_key(
            key_id, context, recipient=recipient
        )

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        context: EncryptionContext,
        *,
        key_id: str | None = None,
        recipient: Recipient | None = None,
    ) -> bytes:
        return await self._service().decrypt(
            ciphertext_blob, context, key_id=key_id, recipient=recipient
        )

    async def close(self) -> None:
        for task, stack in list(self._retiring.items()):
            task.cancel()
            await stack.aclose()
        if self._stack is not None:
            await self._stack.aclose()
        self._current = self._stack = None
