# syntax=docker/dockerfile:1
# The trainer image: `liverank train`, `evaluate`, `export` (torch CPU build, onnx) and the
# data commands. Every package comes from deploy/requirements/train.txt, checked against
# its hashes; torch 2.13.0+cpu from the PyTorch CPU index (PyPI's build of the same version
# would pull several GB of CUDA libraries), the rest from PyPI.
#   docker build -f deploy/docker/trainer.Dockerfile -t liverank-trainer:0.1.0 .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/requirements/build.txt deploy/requirements/train.txt deploy/requirements/
RUN pip install --no-cache-dir --require-hashes -r deploy/requirements/build.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
      --extra-index-url https://download.pytorch.org/whl/cpu -r deploy/requirements/train.txt
COPY pyproject.toml README.md ./
# Every folder of the import namespace (pyproject's package-dir; tests/test_deploy.py checks).
COPY core core
COPY broker broker
COPY model model
COPY replay replay
COPY services services
COPY client client
COPY cli cli
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps /wheels/liverank-*.whl

FROM python:3.11-slim-bookworm
RUN groupadd --gid 10001 liverank \
 && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/liverank \
      --shell /usr/sbin/nologin liverank \
 && install -d -o 10001 -g 10001 /var/lib/liverank
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /var/lib/liverank
USER 10001:10001
# Batch work (Jobs): nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["liverank"]
CMD ["--help"]
