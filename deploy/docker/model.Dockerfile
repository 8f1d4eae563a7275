# syntax=docker/dockerfile:1
# The model image: one exported model directory (`liverank export`: model.onnx +
# model.json with the files' sha256) under /model, and a static `cp` to put it into a pod
# (the workers' init container copies /model to /models/current). Nothing else: no shell,
# no Python. Its tag is the model version; deploying a new tag rolls the workers.
# The build context is the exported directory itself:
#   docker build -f deploy/docker/model.Dockerfile -t liverank-model:2026.11.1 out/models/liverank
# busybox's musl build is one static binary; called as `cp` it is cp.
FROM busybox:1.37.0-musl AS tools

FROM scratch
COPY --from=tools /bin/busybox /bin/cp
COPY . /model/
USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT ["/bin/cp"]
CMD ["-R", "/model", "/models/current"]
