#!/usr/bin/env bash
# Regenerate every lock file from pyproject.toml (uv pip compile, hashes, one platform:
# CPython 3.11 on linux/amd64, what the images and the dev machines run).
#
#   deploy/requirements/lock.sh             # after changing a dependency in pyproject.toml
#
# dev.txt is the one resolution (every extra + build tools); the others are compiled with
# it as constraints, so each pins the same versions with the same hashes (a test checks):
#   dev.txt    make setup                    build.txt  pip, setuptools, wheel
#   serve.txt  serving image (no torch)      broker.txt serving image's dev target (+ tansu)
#   train.txt  trainer image (torch CPU)     checkov.txt .venv/tools/checkov (make setup)
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-.venv/bin/uv}
R=deploy/requirements
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
        --quiet --custom-compile-command "deploy/requirements/lock.sh")
# torch's CPU wheel: from this machine's wheel folder if it has it, else the PyTorch index.
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    torch=(--find-links /opt/wheels)
else
    torch=(--extra-index-url https://download.pytorch.org/whl/cpu
           --index-strategy unsafe-best-match)
fi
"$UV" pip compile "${common[@]}" "${torch[@]}" pyproject.toml $R/build.in --extra all \
    -c $R/torch-cpu.in -o $R/dev.txt
"$UV" pip compile "${common[@]}" $R/build.in -c $R/dev.txt -o $R/build.txt
"$UV" pip compile "${common[@]}" pyproject.toml --extra serve --extra replay --extra client \
    -c $R/dev.txt -o $R/serve.txt
"$UV" pip compile "${common[@]}" pyproject.toml --extra serve --extra replay --extra client \
    --extra broker -c $R/dev.txt -o $R/broker.txt
"$UV" pip compile "${common[@]}" "${torch[@]}" pyproject.toml --extra train \
    -c $R/dev.txt -o $R/train.txt
"$UV" pip compile "${common[@]}" $R/checkov.in -o $R/checkov.txt
