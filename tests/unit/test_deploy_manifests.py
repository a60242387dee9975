"""Every example under deploy/ parses, names what Kubernetes needs, and holds no real secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.service.apply import load_yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
KUBERNETES = [p for p in MANIFESTS if "kubernetes" in p.parts]
KINDS = {"Pod", "Deployment", "Job", "Secret", "ConfigMap"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    if doc["kind"] in ("Deployment", "Job"):
        return dict(doc["spec"]["template"]["spec"])
    return None


def references(spec: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret and ConfigMap a pod spec uses."""
    out: list[tuple[str, str, str | None]] = []
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for env in c.get("env", []):
            ref = env.get("valueFrom", {})
            if "secretKeyRef" in ref:
                out.append(("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
            if "configMapKeyRef" in ref:
                out.append(("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]))
    for v in spec.get("volumes", []):
        if "configMap" in v:
            out.append(("ConfigMap", v["configMap"]["name"], None))
        if "secret" in v:
            out.append(("Secret", v["secret"]["secretName"], None))
    return out


def test_there_are_examples() -> None:
    assert any(p.parent.name == "fleet" for p in KUBERNETES), KUBERNETES


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path, tmp_path: Path) -> None:
    docs = documents(path)
    assert docs
    if path.name == "connectors.yaml":
        assert load_yaml(path)  # the product's own reader
    elif "kubernetes" not in path.parts:
        assert all("services" in d for d in docs)  # docker compose
    for doc in docs:  # connectors files inside ConfigMaps
        if doc.get("kind") == "ConfigMap" and "connectors.yaml" in doc.get("data", {}):
            (tmp_path / "connectors.yaml").write_text(doc["data"]["connectors.yaml"])
            assert load_yaml(tmp_path / "connectors.yaml")


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kubernetes_objects_have_what_the_api_requires(path: Path) -> None:
    for doc in documents(path):
        assert doc["kind"] in KINDS and doc["apiVersion"] and doc["metadata"]["name"], doc.get("kind")
        if doc["kind"] == "Secret":
            for value in doc.get("stringData", {}).values():
                assert "REPLACE-ME" in value  # placeholders, never a real secret
            assert "data" not in doc
        spec = pod_spec(doc)
        if spec is None:
            continue
        if doc["kind"] == "Deployment":
            assert (
                doc["spec"]["selector"]["matchLabels"].items()
                <= doc["spec"]["template"]["metadata"]["labels"].items()
            )
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["name"] and c["image"]
            for env in c.get("env", []):
                assert env["name"] and ("value" in env) != ("valueFrom" in env), env
        mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in spec.get("volumes", [])}


def test_the_fleet_example_is_self_contained_and_one_connection_per_pod() -> None:
    docs = [d for p in KUBERNETES if p.parent.name == "fleet" for d in documents(p)]
    defined = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for doc in docs:
        spec = pod_spec(doc)
        for kind, name, key in references(spec) if spec else []:
            assert (kind, name) in defined, (kind, name)
            held = defined[(kind, name)].get("stringData") or defined[(kind, name)].get("data") or {}
            assert key is None or key in held, (name, key)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (egress,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "egress"]
    assert egress["args"] == ["--workers", "1"]
    assert {e["name"] for e in egress["env"]} >= {"EGRESS_DATABASE_URL", "EGRESS_MASTER_KEY"}
    assert "STRIPE_API_KEY" not in {e["name"] for e in egress["env"]}  # only the init Job sees it
