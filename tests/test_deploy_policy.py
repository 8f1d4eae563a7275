"""Security policy and Dockerfile lint: checkov on every rendered overlay and every
Dockerfile, with only the exceptions deploy/checkov.yaml lists (each justified in
docs/deploy.md), and hadolint on every Dockerfile with no finding at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from deploy_tools import CHECKOV, DEPLOY, DOCKERFILES, OVERLAYS, ROOT, missing, rendered_text, tool
from deploy_tools import run as run_tool

CONFIG = DEPLOY / "checkov.yaml"


def checkov(args: list[str]) -> list[dict[str, str]]:
    """checkov's failed checks (offline: no download of guidelines or policies)."""
    if not CHECKOV.is_file():
        missing("checkov", "its own environment, .venv/tools/checkov")
    out = run_tool([str(CHECKOV), "--config-file", str(CONFIG), "--skip-download",
                    "--quiet", "--compact", "--output", "json", *args])
    assert out.returncode in (0, 1), out.stderr
    reports = json.loads(out.stdout) if out.stdout.strip() else []
    reports = reports if isinstance(reports, list) else [reports]
    assert reports, f"checkov scanned nothing: {out.stdout} {out.stderr}"
    failed = []
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0 and summary["resource_count"] > 0, summary
        failed += [{"check": f["check_id"], "resource": f["resource"],
                    "file": f["file_path"]} for f in report["results"]["failed_checks"]]
    return failed


def checkov_version() -> str:
    return run_tool([str(CHECKOV), "--version"]).stdout.strip()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes_on_the_rendered_overlay(overlay: str, tmp_path: Path) -> None:
    manifests = tmp_path / f"{overlay}.yaml"
    manifests.write_text(rendered_text(overlay))
    failed = checkov(["--framework", "kubernetes", "-f", str(manifests)])
    print(f"checkov {checkov_version()} on {overlay}: {len(failed)} failed")
    assert not failed, failed


def test_checkov_passes_on_every_dockerfile() -> None:
    args = ["--framework", "dockerfile"]
    for path in DOCKERFILES:
        args += ["-f", str(path)]
    failed = checkov(args)
    assert not failed, failed


def test_every_policy_exception_is_justified_in_the_deploy_guide() -> None:
    skipped = yaml.safe_load(CONFIG.read_text())["skip-check"]
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide[guide.index("## Policy exceptions"):]
    for check in skipped:
        assert f"`{check}`" in section, f"docs/deploy.md does not say why {check} is skipped"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = tool("hadolint")
    out = run_tool([hadolint, "--no-color", str(dockerfile)])
    version = run_tool([hadolint, "--version"]).stdout.strip()
    print(f"{version}: {dockerfile.name}: {out.stdout.strip() or 'clean'}")
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout
