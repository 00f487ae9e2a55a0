"""The stand-ins container of docker compose: moto, the attested gate, provisioning.

Starts moto and the KMS gate on 127.0.0.1, then follows the dev workflows once
(vendor key, sealed demo bundle, measured PCR0 approved in both key policies,
hospital key), names the hospital key by the alias the services are configured
with, creates the image bucket, and marks the shared state folder ready. moto
keeps everything in memory, so every start provisions afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from aiobotocore.session import get_session

from standins.devstate import load_or_create_principals, write_gate_config
from standins.kms_gate import GateConfig, GateServer
from standins.moto_server import MotoServer
from standins.nsm import DevPki
from standins.provision import DevPrincipal, Provisioned, provision

REGION = "us-east-1"


def install_principals(state: Path, source: Path) -> dict[str, DevPrincipal]:
    """Copy the compose placeholder principals into the state folder, then load."""
    target = state / "principals.json"
    target.write_text(source.read_text())
    target.chmod(0o600)
    return load_or_create_principals(state)


async def name_and_bucket(
    provisioned: Provisioned,
    admin: DevPrincipal,
    *,
    kms_url: str,
    s3_url: str,
    alias: str,
    bucket: str,
) -> None:
    """Point the services' hospital key alias at the new key; create the bucket."""
    session = get_session()
    credentials = {
        "region_name": REGION,
        "aws_access_key_id": admin.access_key_id,
        "aws_secret_access_key": admin.secret_access_key,
    }
    async with session.create_client("kms", endpoint_url=kms_url, **credentials) as kms:
        await kms.create_alias(AliasName=alias, TargetKeyId=provisioned.hospital_key)
    async with session.create_client("s3", endpoint_url=s3_url, **credentials) as s3:
        await s3.create_bucket(Bucket=bucket)


def write_outputs(state: Path, provisioned: Provisioned) -> None:
    """The keys and PCRs for a developer to look at, then the ready marker."""
    summary = {
        "vendor_key": provisioned.vendor_key,
        "hospital_key": provisioned.hospital_key,
        "pcrs": {f"PCR{i}": value.hex() for i, value in provisioned.pcrs.items()},
    }
    (state / "provisioned.json").write_text(json.dumps(summary, indent=2))
    (state / "ready").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path("/state"))
    parser.add_argument("--principals", type=Path, required=True)
    parser.add_argument("--moto-port", type=int, default=4566)
    parser.add_argument("--gate-port", type=int, default=4567)
    parser.add_argument("--hospital-alias", default="alias/obscura-hospital")
    parser.add_argument("--bucket", default="obscura-images")
    args = parser.parse_args(argv)

    state: Path = args.state
    (state / "ready").unlink(missing_ok=True)
    shutil.rmtree(state / "bundle", ignore_errors=True)
    principals = install_principals(state, args.principals)
    pki = DevPki.load_or_create(state)

    moto = MotoServer(port=args.moto_port).start()
    config = write_gate_config(state, moto.url, principals, pki)
    gate = GateServer(GateConfig.load(config), port=args.gate_port).start()

    provisioned = asyncio.run(provision(gate.url, principals, state))
    asyncio.run(
        name_and_bucket(
            provisioned,
            principals["admin"],
            kms_url=gate.url,
            s3_url=moto.url,
            alias=args.hospital_alias,
            bucket=args.bucket,
        )
    )
    write_outputs(state, provisioned)
    print(f"stand-ins ready: moto {moto.url}, KMS gate {gate.url}", flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        (state / "ready").unlink(missing_ok=True)
        gate.stop()
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
