"""Decrypting a stored prediction for an authorised reader, through KMS.

The results service asks KMS with its own principal, which the hospital key policy
allows to ``Decrypt`` only keys whose context says ``purpose=result``. The expected
context names the job and tenant, so a result copied onto another job is refused
before KMS is asked. The plaintext is returned to the caller only: never stored,
never logged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from services.results.records import StoredResult
from services.results.settings import ResultsSettings
from shared.envelope import unseal_bytes
from shared.errors import InternalError
from shared.keys import KeyService
from shared.kms import AwsKeyService


def result_context(tenant: str, job_id: str) -> dict[str, str]:
    return {"purpose": "result", "tenant": tenant, "job_id": job_id}


async def decrypt_prediction(
    keys: KeyService, stored: StoredResult, tenant: str
) -> dict[str, Any]:
    """The prediction scores (label -> probability) of one stored result."""
    plaintext = await unseal_bytes(
        stored.sealed_result, keys, result_context(tenant, stored.job_id)
    )
    try:
        document = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InternalError(
            f"the sealed result of job {stored.job_id} decrypted to something that"
            " is not JSON; the enclave that sealed it is faulty."
        ) from exc
    finally:
        plaintext[:] = bytes(len(plaintext))
    prediction = document.get("prediction") if isinstance(document, dict) else None
    if not isinstance(prediction, dict):
        raise InternalError(
            f"the sealed result of job {stored.job_id} holds no prediction map;"
            " the enclave that sealed it is faulty."
        )
    return prediction


@contextlib.asynccontextmanager
async def open_key_service(settings: ResultsSettings) -> AsyncIterator[KeyService]:
    """KMS as the results principal, with finite timeouts from the settings."""
    async with AwsKeyService.connect(
        settings.kms_endpoint(), settings.credentials()
    ) as keys:
        yield keys
