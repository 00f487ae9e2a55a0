"""Static checks of the Kubernetes manifests under k8s/.

Schemas come from kubernetes-validate, which carries them offline, pinned to one
Kubernetes version so a schema update cannot change the verdict silently.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.unit.deploy_helpers import (
    ROOT,
    SETTINGS,
    secret_variables,
    settings_variables,
    unknown_variables,
)

K8S_VERSION = "1.31.0"
NITRO_DEVICE = "aws.ec2.nitro/nitro_enclaves"
IRSA = "eks.amazonaws.com/role-arn"

Doc = dict[str, Any]

# The settings each image reads; the launcher image reads none of ours.
IMAGE_SETTINGS = {
    "obscura-gateway": SETTINGS["gateway"],
    "obscura-encryptor": SETTINGS["encryptor"],
    "obscura-results": SETTINGS["results"],
    "obscura-enclave-proxy": SETTINGS["enclave_proxy"],
}


def load_manifests() -> list[Doc]:
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    documents: list[Doc] = []
    for resource in kustomization["resources"]:
        text = (ROOT / "k8s" / resource).read_text()
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def of_kind(documents: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in documents if doc["kind"] == kind]


def named(documents: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in of_kind(documents, kind) if d["metadata"]["name"] == name)


def pod_containers(deployment: Doc) -> Iterator[Doc]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container_variables(container: Doc, documents: list[Doc]) -> list[str]:
    """Names set by ``env`` and by the ConfigMaps its ``envFrom`` pulls in."""
    names = [entry["name"] for entry in container.get("env", [])]
    for source in container.get("envFrom", []):
        config = named(documents, "ConfigMap", source["configMapRef"]["name"])
        names += list(config.get("data", {}))
    return names


def image_settings(container: Doc) -> Any:
    return IMAGE_SETTINGS.get(container["image"].rpartition(":")[0])


def schema_problems(documents: list[Doc]) -> list[str]:
    problems = []
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    return problems


def environment_problems(documents: list[Doc]) -> list[str]:
    problems = []
    for deployment in of_kind(documents, "Deployment"):
        for container in pod_containers(deployment):
            settings = image_settings(container)
            allowed = settings_variables(settings) if settings else frozenset()
            names = container_variables(container, documents)
            for unknown in unknown_variables(names, allowed):
                problems.append(f"{container['name']} sets unread {unknown}")
    return problems


def secret_problems(documents: list[Doc]) -> list[str]:
    """Secret-typed settings must come from a secretKeyRef, never a literal."""
    problems = [
        f"Secret/{d['metadata']['name']} is a value"
        for d in of_kind(documents, "Secret")
    ]
    for deployment in of_kind(documents, "Deployment"):
        for container in pod_containers(deployment):
            settings = image_settings(container)
            secrets = secret_variables(settings) if settings else frozenset()
            for entry in container.get("env", []):
                from_secret = "secretKeyRef" in entry.get("valueFrom", {})
                if entry["name"] in secrets and not from_secret:
                    problems.append(
                        f"{container['name']} sets {entry['name']} literally"
                    )
            for source in container.get("envFrom", []):
                config = named(documents, "ConfigMap", source["configMapRef"]["name"])
                for name in secrets & set(config.get("data", {})):
                    problems.append(f"ConfigMap carries secret {name}")
    return problems


def nitro_problems(documents: list[Doc]) -> list[str]:
    proxy = named(documents, "Deployment", "enclave-proxy")
    problems = []
    resources = [c.get("resources", {}) for c in pod_containers(proxy)]
    if not any(r.get("limits", {}).get(NITRO_DEVICE) == "1" for r in resources):
        problems.append("no container asks for the Nitro Enclaves device")
    huge = [
        r
        for r in resources
        if any(k.startswith("hugepages-") for k in r.get("limits", {}))
    ]
    if not huge:
        problems.append("no container asks for hugepages")
    for r in huge:
        pages = {k: v for k, v in r["limits"].items() if k.startswith("hugepages-")}
        if any(r.get("requests", {}).get(k) != v for k, v in pages.items()):
            problems.append("hugepages request differs from the limit")
        if "memory" not in r.get("limits", {}):
            problems.append("hugepages without a memory limit")
    if not proxy["spec"]["template"]["spec"].get("nodeSelector"):
        problems.append("the proxy has no nodeSelector for enclave nodes")
    return problems


def selects(selector: Doc, labels: Doc) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def availability_problems(documents: list[Doc]) -> list[str]:
    budgets = of_kind(documents, "PodDisruptionBudget")
    problems = []
    for deployment in of_kind(documents, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not any(selects(b["spec"]["selector"], labels) for b in budgets):
            problems.append(f"{name} has no PodDisruptionBudget")
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{container['name']} has no {probe}")
    return problems


def is_default_deny(policy: Doc) -> bool:
    spec = policy["spec"]
    return (
        spec["podSelector"] == {}
        and set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def test_k8s_manifests_validate_against_the_schema() -> None:
    assert schema_problems(load_manifests()) == []


def test_k8s_schema_check_rejects_a_broken_copy() -> None:
    documents = copy.deepcopy(load_manifests())
    named(documents, "Deployment", "gateway")["spec"]["replicas"] = "two"
    named(documents, "Service", "results")["spec"]["portz"] = []

    problems = schema_problems(documents)

    assert len(problems) == 2
    assert problems[0].startswith("Deployment/gateway: ")


def test_k8s_every_file_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (ROOT / "k8s").glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == files


def test_k8s_environment_is_read_by_each_container() -> None:
    documents = load_manifests()

    assert environment_problems(documents) == []
    broken = copy.deepcopy(documents)
    named(broken, "ConfigMap", "enclave-proxy-settings")["data"][
        "OBSCURA_PROXY_CID"
    ] = "16"
    assert environment_problems(broken) == [
        "enclave-proxy sets unread OBSCURA_PROXY_CID"
    ]


def test_k8s_secrets_are_references_only() -> None:
    documents = load_manifests()

    assert secret_problems(documents) == []
    broken = copy.deepcopy(documents)
    named(broken, "ConfigMap", "results-settings")["data"][
        "OBSCURA_RESULTS_DATABASE_URL"
    ] = "postgresql+asyncpg://u:p@h/db"
    assert secret_problems(broken) == [
        "ConfigMap carries secret OBSCURA_RESULTS_DATABASE_URL",
        "ConfigMap carries secret OBSCURA_RESULTS_DATABASE_URL",
    ]


def test_k8s_proxy_requests_the_nitro_device_and_hugepages() -> None:
    documents = load_manifests()

    assert nitro_problems(documents) == []
    broken = copy.deepcopy(documents)
    for container in pod_containers(named(broken, "Deployment", "enclave-proxy")):
        container.get("resources", {}).get("requests", {}).pop("hugepages-2Mi", None)
    assert nitro_problems(broken) == ["hugepages request differs from the limit"]


def test_k8s_enclave_launcher_runs_the_eif_beside_the_proxy() -> None:
    proxy = named(load_manifests(), "Deployment", "enclave-proxy")
    launcher = proxy["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e["value"] for e in launcher["env"]}
    config = named(load_manifests(), "ConfigMap", "enclave-proxy-settings")["data"]

    assert launcher["restartPolicy"] == "Always"
    assert env["ENCLAVE_CID"] == config["OBSCURA_PROXY_WORKER_CID"]
    assert env["ENCLAVE_EIF_PATH"].endswith(".eif")


def test_k8s_every_deployment_has_a_budget_and_probes() -> None:
    documents = load_manifests()

    assert availability_problems(documents) == []
    broken = [d for d in copy.deepcopy(documents) if d["kind"] != "PodDisruptionBudget"]
    del named(broken, "Deployment", "gateway")["spec"]["template"]["spec"][
        "containers"
    ][0]["readinessProbe"]
    assert availability_problems(broken) == [
        "gateway has no PodDisruptionBudget",
        "gateway has no readinessProbe",
        "encryptor has no PodDisruptionBudget",
        "results has no PodDisruptionBudget",
        "enclave-proxy has no PodDisruptionBudget",
    ]


def test_k8s_namespace_denies_by_default() -> None:
    policies = of_kind(load_manifests(), "NetworkPolicy")

    assert any(is_default_deny(p) for p in policies)
    broken = copy.deepcopy(next(p for p in policies if is_default_deny(p)))
    broken["spec"]["ingress"] = [{}]
    assert not is_default_deny(broken)


def test_k8s_internal_services_admit_only_the_gateway() -> None:
    documents = load_manifests()

    for name in ("encryptor", "results"):
        policy = named(documents, "NetworkPolicy", name)
        sources = [p for rule in policy["spec"]["ingress"] for p in rule["from"]]
        assert sources == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}
        ]


def test_k8s_hpa_scales_the_proxy_on_queue_depth() -> None:
    hpa = named(load_manifests(), "HorizontalPodAutoscaler", "enclave-proxy")
    metric = hpa["spec"]["metrics"][0]

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "enclave-proxy",
    }
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {
        "queue": "obscura.jobs"
    }


@pytest.mark.parametrize(
    ("account", "role"),
    [
        ("encryptor", True),
        ("results", True),
        ("enclave-proxy", True),
        ("gateway", False),
    ],
)
def test_k8s_service_accounts_carry_their_own_role(account: str, role: bool) -> None:
    documents = load_manifests()
    annotations = named(documents, "ServiceAccount", account)["metadata"].get(
        "annotations", {}
    )
    roles = [
        a["metadata"].get("annotations", {}).get(IRSA)
        for a in of_kind(documents, "ServiceAccount")
    ]

    assert (IRSA in annotations) is role
    if role:
        assert roles.count(annotations[IRSA]) == 1


def test_k8s_app_containers_drop_privileges() -> None:
    for deployment in of_kind(load_manifests(), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]


def test_k8s_results_migrates_before_serving() -> None:
    results = named(load_manifests(), "Deployment", "results")
    init = results["spec"]["template"]["spec"]["initContainers"]

    assert [c["args"] for c in init] == [["migrate"]]
    assert (
        init[0]["image"]
        == results["spec"]["template"]["spec"]["containers"][0]["image"]
    )
