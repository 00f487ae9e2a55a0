"""Dev provisioning: the vendor and hospital workflows against the local stand-ins.

1. create the vendor key, with the sealer allowed to make model keys;
2. seal the demo model (clearly labelled untrained weights) into a bundle;
3. measure the worker image with that bundle baked in;
4. approve the measured PCR0 in the vendor key policy and create the hospital key
   with the same PCR0 approved.

Used by ``obscura dev up``, the benchmarks and the integration tests. Production
keys are made by each party's own administrators from ``obscura key-policy``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.enclave_worker.demo_weights import make_demo_weights
from services.enclave_worker.models import ARCHITECTURES
from shared.bundle import BundleManifest, seal_model
from shared.keypolicy import (
    EnclaveMeasurement,
    HospitalPrincipals,
    VendorPrincipals,
    hospital_key_policy,
    vendor_key_policy,
)
from shared.kms import AwsKeyService, Credentials, KmsEndpoint
from standins.measure import measure_worker, pcr_bytes

DEMO_ARCHITECTURE = "nyu-image-only"
DEMO_MODEL = "nyu-demo"
DEMO_VERSION = "0.1-untrained"
# A syntactically valid PCR0 that no image measures to, until the real one is known.
_PLACEHOLDER_PCR0 = "11" * 48
ROLES = ("admin", "sealer", "encryptor", "enclave", "results")


@dataclass(frozen=True)
class DevPrincipal:
    name: str
    arn: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key)


@dataclass(frozen=True)
class Provisioned:
    bundle: Path
    manifest: BundleManifest
    weights: bytes = field(repr=False)
    pcrs: Mapping[int, bytes]
    vendor_key: str
    hospital_key: str


def keys_as(
    kms_url: str, principal: DevPrincipal, region: str = "us-east-1"
) -> contextlib.AbstractAsyncContextManager[AwsKeyService]:
    endpoint = KmsEndpoint(region=region, endpoint_url=kms_url)
    return AwsKeyService.connect(endpoint, principal.credentials())


def _vendor(principals: Mapping[str, DevPrincipal], pcr0: str) -> dict[str, Any]:
    roles = VendorPrincipals(
        principals["admin"].arn, principals["sealer"].arn, principals["enclave"].arn
    )
    return vendor_key_policy(roles, EnclaveMeasurement({0: pcr0}))


def _hospital(principals: Mapping[str, DevPrincipal], pcr0: str) -> dict[str, Any]:
    roles = HospitalPrincipals(
        principals["admin"].arn,
        principals["encryptor"].arn,
        principals["enclave"].arn,
        principals["results"].arn,
    )
    return hospital_key_policy(roles, EnclaveMeasurement({0: pcr0}))


async def provision(
    kms_url: str,
    principals: Mapping[str, DevPrincipal],
    folder: Path,
    *,
    weights: bytes | None = None,
) -> Provisioned:
    """Keys, sealed demo bundle and PCRs in ``folder``, following the workflows."""
    weights = weights if weights is not None else make_demo_weights(DEMO_ARCHITECTURE)
    weights_path = folder / "demo-weights.safetensors"
    weights_path.write_bytes(weights)
    known = ARCHITECTURES[DEMO_ARCHITECTURE]
    async with keys_as(kms_url, principals["admin"]) as admin:
        client = admin._client
        created = await client.create_key(
            Policy=json.dumps(_vendor(principals, _PLACEHOLDER_PCR0)),
            Description="Obscura vendor model key (dev)",
        )
        vendor_key = str(created["KeyMetadata"]["Arn"])
        async with keys_as(kms_url, principals["sealer"]) as sealer:
            manifest = await seal_model(
                weights_path,
                folder / "bundle",
                keys=sealer,
                key_id=vendor_key,
                name=DEMO_MODEL,
                version=DEMO_VERSION,
                architecture=DEMO_ARCHITECTURE,
                input_spec={v: list(s) for v, s in known.input_spec.items()},
                labels=list(known.labels),
            )
        weights_path.unlink()
        pcrs = pcr_bytes(measure_worker(bundle_manifest=manifest.canonical_bytes()))
        pcr0 = pcrs[0].hex()
        await client.put_key_policy(
            KeyId=vendor_key,
            PolicyName="default",
            Policy=json.dumps(_vendor(principals, pcr0)),
        )
        hospital = await client.create_key(
            Policy=json.dumps(_hospital(principals, pcr0)),
            Description="Obscura hospital data key (dev)",
        )
    return Provisioned(
        bundle=folder / "bundle",
        manifest=manifest,
        weights=weights,
        pcrs=pcrs,
        vendor_key=vendor_key,
        hospital_key=str(hospital["KeyMetadata"]["Arn"]),
    )
