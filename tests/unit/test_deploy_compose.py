"""Static checks of docker-compose.yml: health, start order, environment, ports."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.unit.deploy_helpers import (
    ROOT,
    SETTINGS,
    settings_variables,
    standin_variables,
    unknown_variables,
)

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
PUBLIC_SERVICES = frozenset({"gateway"})
# What compose binds a published port to when no host address is given.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def allowed_variables() -> dict[str, frozenset[str]]:
    """Which ``OBSCURA_*`` names each compose service may set."""
    standins = standin_variables()
    worker = settings_variables(SETTINGS["enclave_worker"]) | standins
    return {
        "gateway": settings_variables(SETTINGS["gateway"]),
        "encryptor": settings_variables(SETTINGS["encryptor"]),
        "results": settings_variables(SETTINGS["results"]),
        "results-migrate": settings_variables(SETTINGS["results"]),
        "enclave-proxy": settings_variables(SETTINGS["enclave_proxy"]),
        "enclave-worker": worker,
        "standins": standins,
    }


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.partition("=")[::2] for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {
        name: spec.get("condition", "service_started") for name, spec in raw.items()
    }


def one_shots(document: dict[str, Any]) -> set[str]:
    """Services others wait on to complete, and that are never restarted."""
    awaited = {
        target
        for service in document["services"].values()
        for target, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }
    return {
        name
        for name in awaited
        if str(document["services"].get(name, {}).get("restart", "no")) == "no"
    }


def health_problems(document: dict[str, Any]) -> list[str]:
    shots = one_shots(document)
    return [
        f"{name} has no health check and is not a one-shot"
        for name, service in document["services"].items()
        if "healthcheck" not in service and name not in shots
    ]


def dependency_problems(document: dict[str, Any]) -> list[str]:
    services = document["services"]
    problems = []
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            if target not in services:
                problems.append(f"{name} depends on missing {target}")
            elif (
                condition == "service_healthy" and "healthcheck" not in services[target]
            ):
                problems.append(f"{name} waits for {target}, which has no health check")
            elif condition == "service_started":
                problems.append(f"{name} waits on {target} without a condition")
    return problems


def environment_problems(document: dict[str, Any]) -> list[str]:
    allowed = allowed_variables()
    problems = []
    for name, service in document["services"].items():
        names = list(environment(service))
        for unknown in unknown_variables(names, allowed.get(name, frozenset())):
            problems.append(f"{name} sets {unknown}, which nothing there reads")
    return problems


def published_hosts(service: dict[str, Any]) -> list[str]:
    """The host address of every published port ('0.0.0.0' when unbound)."""
    hosts = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            hosts.append(str(port.get("host_ip", ALL_INTERFACES)))
            continue
        parts = str(port).rsplit(":", 2)
        hosts.append(parts[0] if len(parts) == 3 else ALL_INTERFACES)
    return hosts


def port_problems(document: dict[str, Any]) -> list[str]:
    return [
        f"{name} publishes a port on {host}"
        for name, service in document["services"].items()
        if name not in PUBLIC_SERVICES
        for host in published_hosts(service)
        if host.strip("[]") not in LOOPBACK
    ]


CHECKS = (health_problems, dependency_problems, environment_problems, port_problems)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_compose_file_passes(check: Any) -> None:
    assert check(load_compose()) == []


def test_compose_checks_reject_broken_copies() -> None:
    broken = copy.deepcopy(load_compose())
    services = broken["services"]
    del services["encryptor"]["healthcheck"]
    services["gateway"]["depends_on"]["ghost"] = {"condition": "service_healthy"}
    services["gateway"]["environment"]["OBSCURA_GATEWAY_RESULT_URL"] = "http://x"
    services["postgres"]["ports"] = ["5432:5432", "127.0.0.1:5433:5432", "6000"]

    assert health_problems(broken) == [
        "encryptor has no health check and is not a one-shot"
    ]
    assert "gateway depends on missing ghost" in dependency_problems(broken)
    assert "gateway waits for encryptor, which has no health check" in (
        dependency_problems(broken)
    )
    assert environment_problems(broken) == [
        "gateway sets OBSCURA_GATEWAY_RESULT_URL, which nothing there reads"
    ]
    assert port_problems(broken) == [
        "postgres publishes a port on 0.0.0.0",
        "postgres publishes a port on 0.0.0.0",
    ]


def test_compose_env_rule_rejects_another_services_variable() -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"]["enclave-proxy"]["environment"]["OBSCURA_WORKER_SLOTS"] = "2"

    assert environment_problems(broken) == [
        "enclave-proxy sets OBSCURA_WORKER_SLOTS, which nothing there reads"
    ]


def test_compose_worker_runs_the_simulated_enclave_over_tcp() -> None:
    worker = load_compose()["services"]["enclave-worker"]

    assert worker["entrypoint"] == ["python", "-m", "standins.enclave"]
    assert environment(worker)["OBSCURA_WORKER_TRANSPORT"] == "tcp"


def test_compose_migration_is_awaited_by_results() -> None:
    document = load_compose()

    assert document["services"]["results-migrate"]["command"] == ["migrate"]
    assert depends_on(document["services"]["results"])["results-migrate"] == (
        "service_completed_successfully"
    )
    assert "results-migrate" in one_shots(document)


def test_compose_secrets_are_development_placeholders() -> None:
    document = load_compose()

    readers = set(allowed_variables()) - {"standins"}
    for name in readers:
        variables = environment(document["services"][name])
        chosen = [v for k, v in variables.items() if k.endswith("_ENVIRONMENT")]
        assert chosen == ["development"], name
