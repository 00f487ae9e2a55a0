"""Static checks of the Dockerfiles, parsed line by line (docker cannot run here)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from dataclasses import dataclass

import pytest

from tests.unit.deploy_helpers import (
    ROOT,
    SETTINGS,
    settings_variables,
    standin_variables,
    unknown_variables,
)

# Dockerfile -> (service package, settings field holding the served port).
SERVICES = {
    "docker/gateway.Dockerfile": ("gateway", "port"),
    "docker/encryptor.Dockerfile": ("encryptor", "port"),
    "docker/results.Dockerfile": ("results", "port"),
    "docker/enclave-proxy.Dockerfile": ("enclave_proxy", "health_port"),
    "enclave/enclave.Dockerfile": ("enclave_worker", None),
}
NETWORK_TOOLS = re.compile(r"\b(curl|wget|netcat|ncat|nc|socat|telnet|ssh)\b")
SECRET_WORDS = re.compile(r"SECRET|TOKEN|PASSWORD|AMQP_URL|DATABASE_URL")
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def values(instructions: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in instructions if i.keyword == keyword]


def environment(instructions: list[Instruction]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for arguments in values(instructions, "ENV"):
        words = shlex.split(arguments)
        if "=" not in words[0]:
            variables[words[0]] = " ".join(words[1:])
            continue
        variables.update(word.partition("=")[::2] for word in words)
    return variables


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def problems(text: str, package: str, port_field: str | None) -> list[str]:
    """Every rule an application image breaks; empty when it passes."""
    found: list[str] = []
    instructions = parse(text)
    if values(instructions, "FROM") != ["python:3.11-slim"]:
        found.append(f"base is {values(instructions, 'FROM')}, not python:3.11-slim")
    users = values(instructions, "USER")
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        found.append("the image runs as root")

    entry = values(instructions, "ENTRYPOINT")
    expected = ["python", "-m", f"services.{package}"]
    if [json.loads(e) for e in entry] != [expected]:
        found.append(f"ENTRYPOINT is {entry}, not {expected}")
    if not module_exists(f"services.{package}.__main__"):
        found.append(f"services.{package}.__main__ does not exist")

    found += port_problems(instructions, package, port_field)
    found += environment_problems(instructions, package)
    return found


def port_problems(
    instructions: list[Instruction], package: str, port_field: str | None
) -> list[str]:
    exposed = [int(p) for e in values(instructions, "EXPOSE") for p in e.split()]
    if port_field is None:
        return [f"exposes {exposed} without a TCP listener"] if exposed else []
    default = SETTINGS[package].model_fields[port_field].default
    found = (
        [] if exposed == [default] else [f"EXPOSE {exposed}, settings say {default}"]
    )
    checks = values(instructions, "HEALTHCHECK")
    if not any(f"127.0.0.1:{default}/healthz" in check for check in checks):
        found.append(f"no HEALTHCHECK on port {default}")
    return found


def environment_problems(instructions: list[Instruction], package: str) -> list[str]:
    variables = environment(instructions)
    settings = SETTINGS.get(package)
    allowed = settings_variables(settings) if settings else frozenset()
    found = [f"sets unread {name}" for name in unknown_variables(variables, allowed)]
    names = list(variables) + [a.split("=")[0] for a in values(instructions, "ARG")]
    found += [f"bakes in {name}" for name in names if SECRET_WORDS.search(name)]
    return found


def read(path: str) -> str:
    return (ROOT / path).read_text()


@pytest.mark.parametrize("path", sorted(SERVICES))
def test_dockerfile_passes(path: str) -> None:
    package, port_field = SERVICES[path]

    assert problems(read(path), package, port_field) == []


def test_dockerfile_checker_rejects_a_broken_copy() -> None:
    text = read("docker/gateway.Dockerfile")
    broken = (
        text.replace("USER 10001:10001", "USER root")
        .replace("EXPOSE 8080", "EXPOSE 8000")
        .replace('"services.gateway"]', '"services.gatewya"]')
        .replace("ENV OBSCURA_GATEWAY_HOST=", "ENV OBSCURA_GATEWAY_TOKEN=x OBSCURA_GW=")
    )

    assert problems(broken, "gateway", "port") == [
        "the image runs as root",
        'ENTRYPOINT is [\'["python", "-m", "services.gatewya"]\'], not'
        " ['python', '-m', 'services.gateway']",
        "EXPOSE [8000], settings say 8080",
        "sets unread OBSCURA_GATEWAY_TOKEN",
        "sets unread OBSCURA_GW",
        "bakes in OBSCURA_GATEWAY_TOKEN",
    ]


def test_dockerfile_checker_rejects_a_missing_module() -> None:
    assert "services.nowhere.__main__ does not exist" in problems(
        read("docker/gateway.Dockerfile"), "nowhere", None
    )


def test_dockerfile_parse_joins_continued_lines() -> None:
    instructions = parse("FROM x\n# note\nRUN a \\\n    # inner\n    && b\nUSER 1\n")

    assert instructions == [
        Instruction("FROM", "x"),
        Instruction("RUN", "a && b"),
        Instruction("USER", "1"),
    ]


def enclave_problems(text: str) -> list[str]:
    """The enclave image's own rules: vsock, no network, the bundle baked in."""
    instructions = parse(text)
    variables = environment(instructions)
    found = []
    if variables.get("OBSCURA_WORKER_TRANSPORT") != "vsock":
        found.append("the worker transport is not vsock")
    if variables.get("OBSCURA_WORKER_ENVIRONMENT") != "production":
        found.append("the worker environment is not production")
    if "${BUNDLE} /opt/obscura/model" not in values(instructions, "COPY"):
        found.append("the sealed bundle is not copied to the bundle dir")
    if variables.get("OBSCURA_WORKER_BUNDLE_DIR") != "/opt/obscura/model":
        found.append("the bundle dir setting does not name the copied bundle")
    runs = values(instructions, "RUN")
    found += [f"installs a network tool: {r}" for r in runs if NETWORK_TOOLS.search(r)]
    return found


def test_dockerfile_enclave_image_passes() -> None:
    assert enclave_problems(read("enclave/enclave.Dockerfile")) == []


def test_dockerfile_enclave_checker_rejects_a_broken_copy() -> None:
    broken = (
        read("enclave/enclave.Dockerfile")
        .replace("TRANSPORT=vsock", "TRANSPORT=tcp")
        .replace("COPY ${BUNDLE}", "COPY build/other")
        + "RUN apt-get install -y curl\n"
    )

    assert enclave_problems(broken) == [
        "the worker transport is not vsock",
        "the sealed bundle is not copied to the bundle dir",
        "installs a network tool: apt-get install -y curl",
    ]


@pytest.mark.parametrize(
    ("path", "wants_torch"),
    [
        ("docker/gateway.Dockerfile", False),
        ("docker/encryptor.Dockerfile", False),
        ("docker/results.Dockerfile", False),
        ("docker/enclave-proxy.Dockerfile", False),
        ("docker/standins.Dockerfile", True),
        ("enclave/enclave.Dockerfile", True),
    ],
)
def test_dockerfile_torch_only_where_a_model_runs(path: str, wants_torch: bool) -> None:
    runs = " ".join(values(parse(read(path)), "RUN"))

    assert (TORCH_INDEX in runs) is wants_torch
    assert ("--without torch" in runs) is True


def test_dockerfile_standins_image_sets_only_standin_variables() -> None:
    instructions = parse(read("docker/standins.Dockerfile"))

    assert unknown_variables(environment(instructions), standin_variables()) == []
    assert values(instructions, "USER") == ["10001:10001"]


def load_requirements_tool() -> object:
    spec = importlib.util.spec_from_file_location(
        "docker_requirements", ROOT / "docker" / "requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("docker_requirements", module)
    spec.loader.exec_module(module)
    return module


def test_dockerfile_requirements_split_torch_from_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tool = load_requirements_tool()
    pyproject = str(ROOT / "pyproject.toml")

    tool.main([pyproject, "--only", "torch"])  # type: ignore[attr-defined]
    only = capsys.readouterr().out.split()
    tool.main([pyproject, "--without", "torch"])  # type: ignore[attr-defined]
    rest = capsys.readouterr().out.split()

    assert len(only) == 1 and only[0].startswith("torch")
    assert rest and not any(line.lower().startswith("torch") for line in rest)
