import pytest

from shared.errors import CallerError
from shared.keypolicy import (
    EnclaveMeasurement,
    HospitalPrincipals,
    VendorPrincipals,
    hospital_key_policy,
    vendor_key_policy,
)

PCR0 = "ab" * 48
PCR2 = "cd" * 48
ACCOUNT = "arn:aws:iam::111122223333:role/"
VENDOR = VendorPrincipals(ACCOUNT + "admin", ACCOUNT + "sealer", ACCOUNT + "enclave")
HOSPITAL = HospitalPrincipals(
    ACCOUNT + "admin", ACCOUNT + "encryptor", ACCOUNT + "enclave", ACCOUNT + "results"
)


def statement(policy: dict, sid: str) -> dict:
    return next(s for s in policy["Statement"] if s["Sid"] == sid)


def test_vendor_policy_binds_model_release_to_pcr0() -> None:
    policy = vendor_key_policy(VENDOR, EnclaveMeasurement({0: PCR0, 2: PCR2}))
    release = statement(policy, "AttestedEnclaveUnwrapsModel")
    assert release["Action"] == ["kms:Decrypt"]
    assert release["Principal"] == {"AWS": ACCOUNT + "enclave"}
    attested = release["Condition"]["StringEqualsIgnoreCase"]
    assert attested == {
        "kms:RecipientAttestation:ImageSha384": PCR0,
        "kms:RecipientAttestation:PCR2": PCR2,
    }
    sealer = statement(policy, "VendorSealsModels")
    assert "kms:Decrypt" not in sealer["Action"]


def test_vendor_policy_admin_cannot_use_the_key() -> None:
    policy = vendor_key_policy(VENDOR, EnclaveMeasurement({0: PCR0}))
    admin = statement(policy, "KeyAdministration")
    assert not any(a in admin["Action"] for a in ("kms:Decrypt", "kms:GenerateDataKey"))


def test_hospital_policy_separates_image_and_result_keys() -> None:
    policy = hospital_key_policy(HOSPITAL, EnclaveMeasurement({0: PCR0}))
    results = statement(policy, "ResultsDecryptsPredictions")
    assert results["Principal"] == {"AWS": ACCOUNT + "results"}
    assert results["Condition"] == {
        "StringEquals": {"kms:EncryptionContext:purpose": "result"}
    }
    encryptor = statement(policy, "EncryptorCreatesImageKeys")
    assert encryptor["Action"] == ["kms:GenerateDataKey"]
    unwrap = statement(policy, "AttestedEnclaveUnwrapsImageKeys")
    assert unwrap["Condition"]["StringEquals"] == {
        "kms:EncryptionContext:purpose": "image"
    }
    assert (
        unwrap["Condition"]["StringEqualsIgnoreCase"][
            "kms:RecipientAttestation:ImageSha384"
        ]
        == PCR0
    )


def test_measurement_refuses_debug_zeros() -> None:
    with pytest.raises(CallerError, match="all zeros"):
        EnclaveMeasurement({0: "0" * 96})


def test_measurement_refuses_short_hex_and_missing_pcr0() -> None:
    with pytest.raises(CallerError, match="96 lowercase hex"):
        EnclaveMeasurement({0: "abc"})
    with pytest.raises(CallerError, match="needs PCR0"):
        EnclaveMeasurement({1: PCR0})


def test_policy_refuses_a_principal_that_is_not_an_arn() -> None:
    bad = VendorPrincipals("admin", ACCOUNT + "sealer", ACCOUNT + "enclave")
    with pytest.raises(CallerError, match="not an IAM role"):
        vendor_key_policy(bad, EnclaveMeasurement({0: PCR0}))
