"""Decrypting results through the attested KMS gate as the results principal."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.app import create_app
from services.results.components import Components
from services.results.decrypt import result_context
from services.results.handlers import Disposition, MessageHandler
from services.results.settings import ResultsSettings
from services.results.store import JobStore
from shared.cms import generate_recipient_key, public_key_der
from shared.envelope import EnvelopeHeader, seal_bytes
from shared.errors import PermanentDependencyError, Reason
from shared.keypolicy import EnclaveMeasurement, HospitalPrincipals, hospital_key_policy
from shared.keys import Recipient
from shared.kms import AwsKeyService, Credentials, KmsEndpoint
from standins.kms_gate import GateServer
from standins.nsm import SimulatedNsm
from tests.integration.conftest import ENCLAVE_PCRS, PRINCIPALS, KmsClientFactory
from tests.integration.results.conftest import INTERNAL_TOKEN
from tests.integration.results.helpers import (
    prediction_plaintext,
    queued_job,
    result_message,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SCORES = {"benign": 0.3, "malignant": 0.7}


def _keys(gate: GateServer, name: str) -> Any:
    principal = PRINCIPALS[name]
    return AwsKeyService.connect(
        KmsEndpoint(endpoint_url=gate.url),
        Credentials(principal.access_key_id, principal.secret_access_key),
    )


async def _hospital_key(kms_client: KmsClientFactory) -> str:
    principals = HospitalPrincipals(
        admin=PRINCIPALS["admin"].arn,
        encryptor=PRINCIPALS["encryptor"].arn,
        enclave=PRINCIPALS["enclave"].arn,
        results=PRINCIPALS["results"].arn,
    )
    policy = hospital_key_policy(
        principals, EnclaveMeasurement({0: ENCLAVE_PCRS[0].hex()})
    )
    async with kms_client("admin") as admin:
        created = await admin.create_key(Policy=json.dumps(policy))
    return str(created["KeyMetadata"]["KeyId"])


async def test_results_principal_decrypts_result_keys_only(
    kms_gate: GateServer,
    kms_client: KmsClientFactory,
    enclave_nsm: SimulatedNsm,
    settings: ResultsSettings,
    engine: AsyncEngine,
    tenant: str,
) -> None:
    key_id = await _hospital_key(kms_client)
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    private = generate_recipient_key()
    document = enclave_nsm.attest(public_key=public_key_der(private), nonce=b"n" * 16)
    async with _keys(kms_gate, "enclave") as enclave:
        sealed = await seal_bytes(
            prediction_plaintext(job_id, SCORES),
            enclave,
            key_id,
            result_context(tenant, job_id),
            recipient=Recipient(document, private),
        )
    body = result_message(tenant, job_id, "succeeded", bytes(sealed))
    assert await MessageHandler(store).on_result(body) is Disposition.APPLIED

    image_context = {"purpose": "image", "tenant": tenant, "job_id": job_id}
    async with _keys(kms_gate, "encryptor") as encryptor:
        image = await seal_bytes(b"not a prediction", encryptor, key_id, image_context)

    async with _keys(kms_gate, "results") as results_keys:
        components = Components(settings, engine, results_keys)
        transport = httpx.ASGITransport(app=create_app(components))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://results.test",
            headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
        ) as client:
            params = {"tenant": tenant, "actor": "doctor", "decrypt": "true"}
            url = f"/internal/v1/jobs/{job_id}/result"
            clear = await client.get(url, params=params)
            assert clear.status_code == 200, clear.text
            assert clear.json()["prediction"] == SCORES

            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE results SET sealed_result = :s WHERE job_id = :j"),
                    {"s": bytes(image), "j": job_id},
                )
            refused = await client.get(url, params=params)
            assert refused.status_code == 403
            assert refused.json()["error"] == "decrypt_refused"

        # Even asked directly with the right context, KMS refuses image keys.
        header, _ = EnvelopeHeader.read(image)
        with pytest.raises(PermanentDependencyError) as info:
            await results_keys.decrypt(
                header.ciphertext_blob, image_context, key_id=header.key_id
            )
        assert info.value.reason is Reason.ACCESS_DENIED
