"""The two KMS key policies of the trust model, with PCR and context conditions.

Vendor key: wraps the model. Only a request carrying an attestation document whose
PCR0 (``kms:RecipientAttestation:ImageSha384``) is the approved enclave image may
``Decrypt`` it; the vendor's sealing role may create model data keys.

Hospital key: wraps every image and prediction. The encryptor may create image data
keys (``purpose=image``); only the attested enclave may decrypt image keys and create
result keys (``purpose=result``); the results service may decrypt result keys only.

Approving further PCRs (PCR1 runtime, PCR2 application, PCR8 signing certificate)
adds ``kms:RecipientAttestation:PCR<n>`` conditions to the enclave statements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import CallerError

_ADMIN_ACTIONS = [
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]
_PCR_HEX = re.compile(r"^[0-9a-f]{96}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(root|role/.+|user/.+)$")


@dataclass(frozen=True)
class EnclaveMeasurement:
    """Approved PCRs: index -> lowercase hex SHA-384. PCR0 is required."""

    pcrs: Mapping[int, str]

    def __post_init__(self) -> None:
        if 0 not in self.pcrs:
            raise CallerError("An approved enclave measurement needs PCR0.")
        for index, value in self.pcrs.items():
            if not _PCR_HEX.match(value):
                raise CallerError(
                    f"PCR{index} must be 96 lowercase hex digits (SHA-384),"
                    f" got {value[:16]!r}…"
                )
            if value == "0" * 96:
                raise CallerError(
                    f"PCR{index} is all zeros, which only a debug-mode enclave"
                    " reports; approve the measurement of a production image."
                )

    def conditions(self) -> dict[str, str]:
        out = {"kms:RecipientAttestation:ImageSha384": self.pcrs[0]}
        for index in sorted(self.pcrs):
            if index != 0:
                out[f"kms:RecipientAttestation:PCR{index}"] = self.pcrs[index]
        return out


@dataclass(frozen=True)
class VendorPrincipals:
    admin: str
    sealer: str
    enclave: str


@dataclass(frozen=True)
class HospitalPrincipals:
    admin: str
    encryptor: str
    enclave: str
    results: str


def _check_arns(arns: Mapping[str, str]) -> None:
    for role, arn in arns.items():
        if not _ARN.match(arn):
            raise CallerError(
                f"The {role} principal {arn!r} is not an IAM role, user or root ARN;"
                " pass one like arn:aws:iam::111122223333:role/obscura-enclave."
            )


def _admin(arn: str) -> dict[str, Any]:
    return {
        "Sid": "KeyAdministration",
        "Effect": "Allow",
        "Principal": {"AWS": arn},
        "Action": _ADMIN_ACTIONS,
        "Resource": "*",
    }


def _allow(
    sid: str, arn: str, actions: list[str], conditions: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": arn},
        "Action": actions,
        "Resource": "*",
        "Condition": {op: dict(keys) for op, keys in conditions.items()},
    }


def vendor_key_policy(
    principals: VendorPrincipals, measurement: EnclaveMeasurement
) -> dict[str, Any]:
    _check_arns(vars(principals))
    return {
        "Version": "2012-10-17",
        "Id": "obscura-vendor-model-key",
        "Statement": [
            _admin(principals.admin),
            _allow(
                "VendorSealsModels",
                principals.sealer,
                ["kms:GenerateDataKey"],
                {"StringEquals": {"kms:EncryptionContext:purpose": "model"}},
            ),
            _allow(
                "AttestedEnclaveUnwrapsModel",
                principals.enclave,
                ["kms:Decrypt"],
                {
                    "StringEqualsIgnoreCase": measurement.conditions(),
                    "StringEquals": {"kms:EncryptionContext:purpose": "model"},
                },
            ),
        ],
    }


def hospital_key_policy(
    principals: HospitalPrincipals, measurement: EnclaveMeasurement
) -> dict[str, Any]:
    _check_arns(vars(principals))
    attested = measurement.conditions()
    return {
        "Version": "2012-10-17",
        "Id": "obscura-hospital-data-key",
        "Statement": [
            _admin(principals.admin),
            _allow(
                "EncryptorCreatesImageKeys",
                principals.encryptor,
                ["kms:GenerateDataKey"],
                {"StringEquals": {"kms:EncryptionContext:purpose": "image"}},
            ),
            _allow(
                "AttestedEnclaveUnwrapsImageKeys",
                principals.enclave,
                ["kms:Decrypt"],
                {
                    "StringEqualsIgnoreCase": attested,
                    "StringEquals": {"kms:EncryptionContext:purpose": "image"},
                },
            ),
            _allow(
                "AttestedEnclaveCreatesResultKeys",
                principals.enclave,
                ["kms:GenerateDataKey"],
                {
                    "StringEqualsIgnoreCase": attested,
                    "StringEquals": {"kms:EncryptionContext:purpose": "result"},
                },
            ),
            _allow(
                "ResultsDecryptsPredictions",
                principals.results,
                ["kms:Decrypt"],
                {"StringEquals": {"kms:EncryptionContext:purpose": "result"}},
            ),
        ],
    }
