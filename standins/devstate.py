"""The dev state folder: principals, the KMS gate's config and the dev PKI.

Everything a local mesh needs to know about identities lives under one folder
(``.obscura`` by default), created once and reused:

    principals.json   access key id, secret and ARN per role (mode 0600)
    kms-gate.json     the gate's config: upstream moto, dev root, principals
    nsm-pki/          the simulated NSM's root and intermediate (standins.nsm)

``KmsStack`` starts moto and the gate in this process, for benchmarks and tools
that want the stand-ins without the supervised mesh.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.serialization import Encoding

from standins.kms_gate import GateConfig, GateServer
from standins.moto_server import MotoServer, wait_until_answering
from standins.nsm import DevPki
from standins.provision import ROLES, DevPrincipal

ACCOUNT_ID = "111122223333"


def load_or_create_principals(state_dir: Path) -> dict[str, DevPrincipal]:
    path = state_dir / "principals.json"
    if path.exists():
        data = json.loads(path.read_text())
        return {name: DevPrincipal(name=name, **entry) for name, entry in data.items()}
    principals = {
        name: DevPrincipal(
            name=name,
            arn=f"arn:aws:iam::{ACCOUNT_ID}:role/obscura-{name}",
            access_key_id="AKIA" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
        )
        for name in ROLES
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    document = {
        p.name: {
            "arn": p.arn,
            "access_key_id": p.access_key_id,
            "secret_access_key": p.secret_access_key,
        }
        for p in principals.values()
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle, indent=2)
    return principals


def write_gate_config(
    state_dir: Path,
    upstream: str,
    principals: Mapping[str, DevPrincipal],
    pki: DevPki,
) -> Path:
    root = state_dir / "dev-root.pem"
    root.write_bytes(pki.root_certificate.public_bytes(Encoding.PEM))
    document = {
        "upstream": upstream,
        "account_id": ACCOUNT_ID,
        "attestation_root_pem": root.name,
        "principals": {
            p.access_key_id: {"arn": p.arn, "secret_access_key": p.secret_access_key}
            for p in principals.values()
        },
    }
    path = state_dir / "kms-gate.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle, indent=2)
    return path


class KmsStack:
    """moto and the attested gate for tools that want the stand-ins.

    In threads of this process by default; with ``processes=True`` as two child
    processes, so that their CPU time and GIL are not the caller's (benchmarks).
    """

    def __init__(self, state_dir: Path, *, processes: bool = False) -> None:
        self.state_dir = state_dir
        self.pki = DevPki.load_or_create(state_dir)
        self.principals = load_or_create_principals(state_dir)
        self._processes = processes
        self._children: list[subprocess.Popen[bytes]] = []
        self._moto: MotoServer | None = None
        self._gate: GateServer | None = None
        self.moto_url = ""
        self.kms_url = ""

    def start(self) -> KmsStack:
        if self._processes:
            return self._start_processes()
        self._moto = MotoServer().start()
        self.moto_url = self._moto.url
        path = self._gate_config()
        self._gate = GateServer(GateConfig.load(path)).start()
        self.kms_url = self._gate.url
        return self

    def _start_processes(self) -> KmsStack:
        moto_port, gate_port = _free_port(), _free_port()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        self._spawn("standins.moto_server", "--port", str(moto_port))
        wait_until_answering("127.0.0.1", moto_port, timeout_s=30)
        path = self._gate_config()
        self._spawn(
            "standins.kms_gate", "--config", str(path), "--port", str(gate_port)
        )
        wait_until_answering("127.0.0.1", gate_port, timeout_s=30)
        self.kms_url = f"http://127.0.0.1:{gate_port}"
        return self

    def _gate_config(self) -> Path:
        return write_gate_config(
            self.state_dir, self.moto_url, self.principals, self.pki
        )

    def _spawn(self, module: str, *args: str) -> None:
        self._children.append(
            subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def stop(self) -> None:
        if self._gate is not None:
            self._gate.stop()
        if self._moto is not None:
            self._moto.stop()
        for child in reversed(self._children):
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __enter__(self) -> KmsStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
