"""Helpers of the deployment tests (tests/test_deploy*.py): the tools, rendered overlays,
the CRD schemas carried in deploy/crds.

Every tool comes from `make setup` (kubectl with its built-in kustomize, kubernetes-validate
and hadolint from the dev extra; checkov in .venv/tools/checkov). A missing tool fails the
test in CI (``CI`` set) and skips it elsewhere, naming the tool and how to get it.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
CHECKOV = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"


def missing(tool: str, how: str) -> Any:
    reason = f"{tool} not found ({how}; `make setup` installs it)"
    print(reason)
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def tool(name: str) -> str:
    """A tool next to this Python first (the venv's own), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        missing(name, "the dev extra of pyproject.toml")
    assert found is not None
    return found


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@functools.cache
def kubectl_version() -> str:
    out = run([tool("kubectl"), "version", "--client"])
    return " ".join(out.stdout.split())


@functools.cache
def rendered_text(overlay: str) -> str:
    """``kubectl kustomize`` of an overlay: the manifests `kubectl apply -k` would send."""
    out = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
    assert out.returncode == 0, f"{overlay} does not render: {out.stderr}"
    return out.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy([d for d in yaml.safe_load_all(rendered_text(overlay)) if d])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in {"StatefulSet", "Deployment", "Job", "DaemonSet"}]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def rendered_settings(overlay: str, monkeypatch: pytest.MonkeyPatch,
                      env: dict[str, str] | None = None) -> Any:
    """`Settings` as a pod of the overlay builds them: its ConfigMap (plus ``env``), and
    none of this process's own ``LIVERANK_*`` variables."""
    from liverank.core.settings import Settings

    for name in list(os.environ):
        if name.startswith("LIVERANK_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    for name, value in (one(rendered(overlay), "ConfigMap")["data"] | (env or {})).items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# --- custom resources: the CRDs' own schemas ---------------------------------------------------

@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): openAPIV3Schema} of every served version of the CRDs carried in
    deploy/crds (deploy/crds/README.md says where each comes from)."""
    schemas = {}
    for path in sorted((DEPLOY / "crds").rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused where the API server would drop or refuse
    them (``kubectl apply --validate=strict``): every object that lists its properties and
    does not keep unknown fields gets ``additionalProperties: false``."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    # allOf/anyOf/oneOf branches of a structural schema only restate some of the
    # properties (to require them): they stay as they are.
    return schema
