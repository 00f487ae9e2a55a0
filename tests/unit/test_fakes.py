"""The in-memory key service other tests rely on must fail the way KMS does."""

from __future__ import annotations

import pytest

from shared.errors import PermanentDependencyError, Reason
from tests.fakes import FakeKeyService, KmsCall

CONTEXT = {"job_id": "job-1", "purpose": "image"}


async def test_fake_key_service_round_trips_data_key() -> None:
    keys = FakeKeyService("alias/a")

    data_key = await keys.generate_data_key("alias/a", CONTEXT)
    plaintext = await keys.decrypt(data_key.ciphertext_blob, CONTEXT)

    assert len(data_key.plaintext) == 32
    assert plaintext == data_key.plaintext
    assert data_key.plaintext not in data_key.ciphertext_blob
    assert [call.operation for call in keys.calls] == ["GenerateDataKey", "Decrypt"]


@pytest.mark.parametrize(
    "context",
    [{}, {"job_id": "job-2", "purpose": "image"}, {**CONTEXT, "extra": "x"}],
)
async def test_fake_key_service_decrypt_with_other_context_is_invalid(
    context: dict[str, str],
) -> None:
    keys = FakeKeyService()
    data_key = await keys.generate_data_key("alias/obscura-test", CONTEXT)

    with pytest.raises(PermanentDependencyError) as info:
        await keys.decrypt(data_key.ciphertext_blob, context)

    assert info.value.reason is Reason.INVALID_CIPHERTEXT


async def test_fake_key_service_decrypt_with_other_key_id_is_invalid() -> None:
    keys = FakeKeyService("alias/a", "alias/b")
    data_key = await keys.generate_data_key("alias/a", CONTEXT)

    with pytest.raises(PermanentDependencyError) as info:
        await keys.decrypt(data_key.ciphertext_blob, CONTEXT, key_id="alias/b")

    assert info.value.reason is Reason.INVALID_CIPHERTEXT
    assert await keys.decrypt(data_key.ciphertext_blob, CONTEXT, key_id="alias/a")


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
async def test_fake_key_service_damaged_blob_is_invalid(damage: str) -> None:
    keys = FakeKeyService()
    blob = bytearray(
        (await keys.generate_data_key("alias/obscura-test", CONTEXT)).ciphertext_blob
    )
    if damage == "flip":
        blob[-1] ^= 1
    elif damage == "truncate":
        del blob[10:]
    else:
        blob[:4] = b"ABCD"

    with pytest.raises(PermanentDependencyError) as info:
        await keys.decrypt(bytes(blob), CONTEXT)

    assert info.value.reason is Reason.INVALID_CIPHERTEXT


async def test_fake_key_service_unknown_key_is_not_found() -> None:
    keys = FakeKeyService("alias/a")

    with pytest.raises(PermanentDependencyError) as info:
        await keys.generate_data_key("alias/missing", CONTEXT)

    assert info.value.reason is Reason.NOT_FOUND


async def test_fake_key_service_instances_do_not_share_master_keys() -> None:
    data_key = await FakeKeyService("alias/a").generate_data_key("alias/a", CONTEXT)

    with pytest.raises(PermanentDependencyError):
        await FakeKeyService("alias/a").decrypt(data_key.ciphertext_blob, CONTEXT)


async def test_fake_key_service_policy_can_refuse_requests() -> None:
    def decrypt_only_for_results(call: KmsCall) -> None:
        if call.operation == "Decrypt" and call.context.get("purpose") != "result":
            raise PermanentDependencyError("denied by test policy.")

    keys = FakeKeyService(policy=decrypt_only_for_results)
    data_key = await keys.generate_data_key("alias/obscura-test", CONTEXT)

    with pytest.raises(PermanentDependencyError) as info:
        await keys.decrypt(data_key.ciphertext_blob, CONTEXT)

    assert info.value.reason is Reason.ACCESS_DENIED
    assert len(keys.operations("Decrypt")) == 1


def test_fake_key_service_repr_shows_no_key_material() -> None:
    keys = FakeKeyService("alias/a")

    assert repr(keys) == "FakeKeyService(keys=['alias/a'], calls=0)"
