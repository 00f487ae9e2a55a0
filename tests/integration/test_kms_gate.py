"""The attested KMS gate in front of real moto, driven by aiobotocore clients."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.cms import (
    generate_recipient_key,
    open_ciphertext_for_recipient,
    public_key_der,
)
from shared.keypolicy import EnclaveMeasurement, HospitalPrincipals, hospital_key_policy
from standins.kms_gate import GateConfig, GateServer
from standins.nsm import DevPki, SimulatedNsm
from tests.integration.conftest import (
    ACCOUNT_ID,
    ENCLAVE_PCRS,
    PRINCIPALS,
    open_kms_client,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Factory = Callable[[str], contextlib.AbstractAsyncContextManager[Any]]
MotoFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
IMAGE = {"purpose": "image", "job_id": "job-1"}
RESULT = {"purpose": "result", "job_id": "job-1"}


def _hospital_policy() -> dict[str, Any]:
    principals = HospitalPrincipals(
        admin=PRINCIPALS["admin"].arn,
        encryptor=PRINCIPALS["encryptor"].arn,
        enclave=PRINCIPALS["enclave"].arn,
        results=PRINCIPALS["results"].arn,
    )
    measurement = EnclaveMeasurement({0: ENCLAVE_PCRS[0].hex()})
    return hospital_key_policy(principals, measurement)


async def _hospital_key(kms_client: Factory) -> str:
    async with kms_client("admin") as kms:
        created = await kms.create_key(Policy=json.dumps(_hospital_policy()))
    return str(created["KeyMetadata"]["KeyId"])


def _recipient(nsm: SimulatedNsm) -> tuple[dict[str, Any], Any]:
    key = generate_recipient_key()
    document = nsm.attest(public_key=public_key_der(key), nonce=b"n" * 16)
    recipient = {
        "AttestationDocument": document,
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
    }
    return recipient, key


async def _image_key(kms_client: Factory, key_id: str) -> dict[str, Any]:
    async with kms_client("encryptor") as kms:
        answer: dict[str, Any] = await kms.generate_data_key(
            KeyId=key_id, KeySpec="AES_256", EncryptionContext=IMAGE
        )
    return answer


def _code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


async def test_kms_gate_passes_admin_calls_through(kms_client: Factory) -> None:
    key_id = await _hospital_key(kms_client)
    replacement = {**_hospital_policy(), "Id": "replaced"}

    async with kms_client("admin") as kms:
        described = await kms.describe_key(KeyId=key_id)
        await kms.put_key_policy(
            KeyId=key_id, PolicyName="default", Policy=json.dumps(replacement)
        )
        fetched = await kms.get_key_policy(KeyId=key_id, PolicyName="default")

    assert described["KeyMetadata"]["Arn"] == (
        f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/{key_id}"
    )
    assert json.loads(fetched["Policy"]) == replacement


async def test_kms_gate_recipient_data_key_opens_to_moto_plaintext(
    kms_client: Factory, moto_kms_client: MotoFactory, enclave_nsm: SimulatedNsm
) -> None:
    key_id = await _hospital_key(kms_client)
    recipient, private_key = _recipient(enclave_nsm)

    async with kms_client("enclave") as kms:
        answer = await kms.generate_data_key(
            KeyId=key_id,
            KeySpec="AES_256",
            EncryptionContext=RESULT,
            Recipient=recipient,
        )
    async with moto_kms_client() as moto:
        direct = await moto.decrypt(
            CiphertextBlob=answer["CiphertextBlob"], EncryptionContext=RESULT
        )

    assert "Plaintext" not in answer
    assert answer["KeyId"] == direct["KeyId"]
    opened = open_ciphertext_for_recipient(
        answer["CiphertextForRecipient"], private_key, plaintext_length=32
    )
    assert opened == direct["Plaintext"]


async def test_kms_gate_recipient_decrypt_opens_image_key(
    kms_client: Factory, enclave_nsm: SimulatedNsm
) -> None:
    key_id = await _hospital_key(kms_client)
    image_key = await _image_key(
        kms_client, f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/{key_id}"
    )
    recipient, private_key = _recipient(enclave_nsm)

    async with kms_client("enclave") as kms:
        answer = await kms.decrypt(
            CiphertextBlob=image_key["CiphertextBlob"],
            EncryptionContext=IMAGE,
            Recipient=recipient,
        )

    assert "Plaintext" not in answer
    assert answer["KeyId"] == image_key["KeyId"]
    opened = open_ciphertext_for_recipient(
        answer["CiphertextForRecipient"], private_key
    )
    assert opened == image_key["Plaintext"]


async def test_kms_gate_other_pcr0_is_denied(
    kms_client: Factory, dev_pki: DevPki
) -> None:
    key_id = await _hospital_key(kms_client)
    image_key = await _image_key(kms_client, key_id)
    other = {**ENCLAVE_PCRS, 0: hashlib.sha384(b"another image").digest()}
    recipient, _ = _recipient(SimulatedNsm(dev_pki, other))

    async with kms_client("enclave") as kms:
        with pytest.raises(ClientError) as info:
            await kms.decrypt(
                CiphertextBlob=image_key["CiphertextBlob"],
                EncryptionContext=IMAGE,
                Recipient=recipient,
            )

    assert _code(info) == "AccessDeniedException"
    message = info.value.response["Error"]["Message"]
    assert PRINCIPALS["enclave"].arn in message
    assert "kms:Decrypt" in message
    assert key_id in message


async def test_kms_gate_debug_mode_document_is_denied(
    kms_client: Factory, dev_pki: DevPki
) -> None:
    key_id = await _hospital_key(kms_client)
    recipient, _ = _recipient(SimulatedNsm(dev_pki, ENCLAVE_PCRS, debug=True))

    async with kms_client("enclave") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId=key_id,
                KeySpec="AES_256",
                EncryptionContext=RESULT,
                Recipient=recipient,
            )

    assert _code(info) == "AccessDeniedException"
    assert "debug-mode" in info.value.response["Error"]["Message"]


async def test_kms_gate_without_recipient_enclave_is_denied(
    kms_client: Factory,
) -> None:
    key_id = await _hospital_key(kms_client)
    image_key = await _image_key(kms_client, key_id)

    async with kms_client("enclave") as kms:
        with pytest.raises(ClientError) as info:
            await kms.decrypt(
                CiphertextBlob=image_key["CiphertextBlob"], EncryptionContext=IMAGE
            )

    assert _code(info) == "AccessDeniedException"
    assert "Plaintext" not in info.value.response


async def test_kms_gate_results_decrypts_result_keys_only(
    kms_client: Factory, moto_kms_client: MotoFactory
) -> None:
    key_id = await _hospital_key(kms_client)
    async with moto_kms_client() as moto:
        result_key = await moto.generate_data_key(
            KeyId=key_id, KeySpec="AES_256", EncryptionContext=RESULT
        )
    image_key = await _image_key(kms_client, key_id)

    async with kms_client("results") as kms:
        allowed = await kms.decrypt(
            CiphertextBlob=result_key["CiphertextBlob"], EncryptionContext=RESULT
        )
        with pytest.raises(ClientError) as info:
            await kms.decrypt(
                CiphertextBlob=image_key["CiphertextBlob"], EncryptionContext=IMAGE
            )

    assert allowed["Plaintext"] == result_key["Plaintext"]
    assert _code(info) == "AccessDeniedException"


async def test_kms_gate_resolves_alias_before_checking(kms_client: Factory) -> None:
    key_id = await _hospital_key(kms_client)
    alias = f"alias/hospital-{key_id[:8]}"
    async with kms_client("admin") as kms:
        await kms.create_alias(AliasName=alias, TargetKeyId=key_id)

    image_key = await _image_key(kms_client, alias)
    async with kms_client("encryptor") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId=alias, KeySpec="AES_256", EncryptionContext=RESULT
            )

    assert image_key["KeyId"].endswith(key_id)
    assert _code(info) == "AccessDeniedException"


async def test_kms_gate_encrypt_without_statement_is_denied(
    kms_client: Factory,
) -> None:
    key_id = await _hospital_key(kms_client)

    async with kms_client("encryptor") as kms:
        with pytest.raises(ClientError) as info:
            await kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext=IMAGE)

    assert _code(info) == "AccessDeniedException"


async def test_kms_gate_untrusted_document_is_denied(kms_client: Factory) -> None:
    key_id = await _hospital_key(kms_client)
    recipient, _ = _recipient(SimulatedNsm(DevPki.create(), ENCLAVE_PCRS))

    async with kms_client("enclave") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId=key_id,
                KeySpec="AES_256",
                EncryptionContext=RESULT,
                Recipient=recipient,
            )

    assert _code(info) == "AccessDeniedException"
    assert "not trusted" in info.value.response["Error"]["Message"]


async def test_kms_gate_unparsable_document_is_a_validation_error(
    kms_client: Factory,
) -> None:
    key_id = await _hospital_key(kms_client)
    recipient = {
        "AttestationDocument": b"not cbor at all",
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
    }

    async with kms_client("enclave") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId=key_id,
                KeySpec="AES_256",
                EncryptionContext=RESULT,
                Recipient=recipient,
            )

    assert _code(info) == "ValidationException"


async def test_kms_gate_unknown_access_key_is_unrecognized(
    kms_client: Factory, kms_gate: GateServer
) -> None:
    async with open_kms_client(kms_gate.url, "AKIANOBODY0000000000", "whatever") as kms:
        with pytest.raises(ClientError) as info:
            await kms.list_keys()

    assert _code(info) == "UnrecognizedClientException"


async def test_kms_gate_wrong_secret_is_invalid_signature(kms_gate: GateServer) -> None:
    admin = PRINCIPALS["admin"]
    async with open_kms_client(
        kms_gate.url, admin.access_key_id, "wrong-secret"
    ) as kms:
        with pytest.raises(ClientError) as info:
            await kms.list_keys()

    assert _code(info) == "InvalidSignatureException"


async def test_kms_gate_not_found_key_is_reported_as_kms_does(
    kms_client: Factory,
) -> None:
    async with kms_client("encryptor") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId="alias/does-not-exist", KeySpec="AES_256", EncryptionContext=IMAGE
            )

    assert _code(info) == "NotFoundException"


async def test_kms_gate_generate_random_for_recipient_is_wrapped(
    kms_client: Factory, enclave_nsm: SimulatedNsm
) -> None:
    recipient, private_key = _recipient(enclave_nsm)

    async with kms_client("enclave") as kms:
        answer = await kms.generate_random(NumberOfBytes=32, Recipient=recipient)

    assert "Plaintext" not in answer
    opened = open_ciphertext_for_recipient(
        answer["CiphertextForRecipient"], private_key
    )
    assert len(opened) == 32


async def test_kms_gate_re_encrypt_without_statement_is_denied(
    kms_client: Factory,
) -> None:
    key_id = await _hospital_key(kms_client)
    image_key = await _image_key(kms_client, key_id)

    async with kms_client("encryptor") as kms:
        with pytest.raises(ClientError) as info:
            await kms.re_encrypt(
                CiphertextBlob=image_key["CiphertextBlob"],
                SourceEncryptionContext=IMAGE,
                DestinationKeyId=key_id,
            )

    assert _code(info) == "AccessDeniedException"
    assert "kms:ReEncryptFrom" in info.value.response["Error"]["Message"]


async def test_kms_gate_unreachable_upstream_is_internal_error(
    gate_config: GateConfig,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = dataclasses.replace(
        gate_config, upstream=f"http://127.0.0.1:{closed_port}"
    )
    server = GateServer(config).start()
    admin = PRINCIPALS["admin"]
    try:
        async with open_kms_client(
            server.url, admin.access_key_id, admin.secret_access_key
        ) as kms:
            with pytest.raises(ClientError) as info:
                await kms.list_keys()
    finally:
        server.stop()

    assert _code(info) == "KMSInternalException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


async def test_kms_gate_unreadable_key_policy_denies(kms_client: Factory) -> None:
    async with kms_client("admin") as admin:
        created = await admin.create_key(Policy="this is not a policy")
    key_id = created["KeyMetadata"]["KeyId"]

    async with kms_client("encryptor") as kms:
        with pytest.raises(ClientError) as info:
            await kms.generate_data_key(
                KeyId=key_id, KeySpec="AES_256", EncryptionContext=IMAGE
            )

    assert _code(info) == "AccessDeniedException"
    assert "the key policy cannot be read" in info.value.response["Error"]["Message"]
