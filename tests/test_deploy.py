"""The deployment manifests parse and only set settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from liverank.core.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the manifests")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_manifests_parse_with_kinds() -> None:
    kinds = {d["kind"] for d in manifests()}
    assert {"ConfigMap", "StatefulSet", "Service", "Job", "Kustomization"} <= kinds


def test_every_liverank_variable_is_a_setting() -> None:
    known = {"LIVERANK_" + name.upper() for name in Settings.model_fields}
    text = "\n".join(p.read_text() for p in [*(DEPLOY / "k8s").glob("*.yaml"),
                                               DEPLOY / "Dockerfile", DEPLOY / "README.md"])
    used = set(re.findall(r"LIVERANK_[A-Z_]+", text))
    assert used and used <= known, used - known


def test_service_probes_and_commands() -> None:
    sts = next(d for d in manifests() if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["args"][0] == "serve"
    job = next(d for d in manifests() if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "replay"


def test_the_image_copies_every_package_folder() -> None:
    import tomllib

    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\w+) \1$", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert folders and folders <= copied, folders - copied
    # and `make lint` type-checks each of them
    make = re.search(r"^PACKAGES\s*:=(.*)$", (DEPLOY.parent / "Makefile").read_text(), re.M)
    assert make is not None and set(make.group(1).split()) == folders


def test_configuration_reference_is_current() -> None:
    from liverank.core.settings import settings_markdown

    doc = DEPLOY.parent / "docs" / "configuration.md"
    assert doc.read_text() == settings_markdown(), "run: liverank config --markdown > " + str(doc)


def test_unknown_liverank_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVERANK_TOPK", "5")
    with pytest.raises(ValueError, match="LIVERANK_TOPK"):
        Settings()
