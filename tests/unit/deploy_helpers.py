"""What the deployment documents may set: the environment each process reads.

A variable a settings class does not read is silently ignored by pydantic-settings
(``extra="ignore"``), so a typo in compose or a manifest would deploy a default. The
deploy tests compare every ``OBSCURA_*`` name against these sets instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.enclave_proxy.settings import ProxySettings
from services.enclave_worker.settings import WorkerSettings
from services.encryptor.settings import EncryptorSettings
from services.gateway.settings import GatewaySettings
from services.results.settings import ResultsSettings

ROOT = Path(__file__).resolve().parents[2]

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "encryptor": EncryptorSettings,
    "results": ResultsSettings,
    "enclave_proxy": ProxySettings,
    "enclave_worker": WorkerSettings,
}

_ENVIRON_READ = re.compile(
    r"os\.environ(?:\.get\(|\[)\s*[\"'](OBSCURA_[A-Z0-9_]+)[\"']|"
    r"os\.getenv\(\s*[\"'](OBSCURA_[A-Z0-9_]+)[\"']"
)


def settings_variables(settings: type[BaseSettings]) -> frozenset[str]:
    """Every variable name a settings class reads: prefix plus field, upper-cased."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return frozenset((prefix + name).upper() for name in settings.model_fields)


def secret_variables(settings: type[BaseSettings]) -> frozenset[str]:
    """The variables whose fields are typed secret, which must never be literal."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return frozenset(
        (prefix + name).upper()
        for name, field in settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    )


def standin_variables() -> frozenset[str]:
    """The ``OBSCURA_*`` variables the stand-ins read with ``os.environ``."""
    found: set[str] = set()
    for source in (ROOT / "standins").glob("*.py"):
        for match in _ENVIRON_READ.finditer(source.read_text()):
            found.add(match.group(1) or match.group(2))
    return frozenset(found)


def unknown_variables(names: object, allowed: frozenset[str]) -> list[str]:
    """The ``OBSCURA_*`` names in ``names`` that no reader in ``allowed`` knows."""
    assert isinstance(names, list | set | frozenset | tuple | dict)
    return sorted(
        name
        for name in names
        if str(name).startswith("OBSCURA_") and str(name) not in allowed
    )
