"""The Kubernetes manifests: every overlay renders (kustomize, inside kubectl), every core
object validates strictly (kubernetes-validate), every custom resource (Strimzi, KEDA,
Prometheus Operator) validates against its CRD's schema carried in deploy/crds, the pods
meet the "restricted" Pod Security Standard, and every variable they set is a setting.

Topics, scaling bounds and the ACLs are checked against the settings in
tests/test_deploy_topics.py; images and locks in tests/test_deploy_images.py; checkov and
hadolint in tests/test_deploy_policy.py. docs/deploy.md lists the tools and versions.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_tools import (
    DEPLOY,
    OVERLAYS,
    containers,
    crd_schemas,
    kubectl_version,
    of_kind,
    one,
    pod_specs,
    rendered,
    rendered_settings,
)

from liverank.core.settings import Settings

# Faust reads these from the environment itself (WEB_HOST: the address peers forward lookups
# to); the others are for the pods' own use. Everything else a manifest sets is LIVERANK_*.
OTHER_VARIABLES = {"WEB_HOST", "POD_NAME", "POD_NAMESPACE", "POD_IP", "HOME"}
CUSTOM_GROUPS = ("kafka.strimzi.io/", "keda.sh/", "monitoring.coreos.com/")


def test_the_overlays_are_dev_and_prod() -> None:
    assert OVERLAYS == ["dev", "prod"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_renders_into_its_own_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    print(f"rendered {overlay} with {kubectl_version()}: {len(docs)} objects")
    namespace = one(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace
               for d in docs if d["kind"] != "Namespace")
    # the namespace enforces the restricted Pod Security Standard
    assert one(docs, "Namespace")["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "restricted"
    assert {"ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget", "Job",
            "NetworkPolicy", "ServiceAccount"} <= {d["kind"] for d in docs}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_core_object_validates_strictly(overlay: str) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    core = [d for d in rendered(overlay) if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    errors = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                          f"{'.'.join(map(str, exc.path))}")
    print(f"kubernetes-validate {kubernetes_validate.version.__version__} (schemas of "
          f"Kubernetes {version}), --strict: {len(core)} objects of {overlay}")
    assert not errors, errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_validates_against_its_crd(overlay: str) -> None:
    import jsonschema

    schemas = crd_schemas()
    custom = [d for d in rendered(overlay) if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    errors = []
    for doc in custom:
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"no CRD in deploy/crds serves {key}"
        validator = jsonschema.Draft7Validator(schemas[key])
        errors += [f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at "
                   f"{'.'.join(map(str, e.path))}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    if overlay == "prod":
        kinds = {d["kind"] for d in custom}
        assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ScaledObject",
                "TriggerAuthentication", "PodMonitor"} <= kinds


def test_the_crd_check_catches_what_the_api_server_would_refuse() -> None:
    import jsonschema

    schema = crd_schemas()[("kafka.strimzi.io/v1", "KafkaTopic")]
    good = {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic",
            "metadata": {"name": "t"}, "spec": {"partitions": 8, "replicas": 3}}
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(good))
    typo = good | {"spec": {"partitions": 8, "replica": 3}}
    wrong_type = good | {"spec": {"partitions": "8"}}
    for bad in (typo, wrong_type):
        assert list(jsonschema.Draft7Validator(schema).iter_errors(bad)), bad
    # the API versions the operators serve now: Strimzi 1.x serves v1 only
    assert ("kafka.strimzi.io/v1beta2", "Kafka") not in crd_schemas()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    for name, spec in pod_specs(rendered(overlay)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(spec):
            ctx = c["securityContext"]
            where = f"{name} {c['name']}"
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            assert {"requests", "limits"} <= set(c["resources"]), where
            # a writable /tmp on a read-only root
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert c["name"] == "model" or "/tmp" in mounts, where


def _variables(docs: list[dict[str, Any]]) -> set[str]:
    names = set()
    for cm in of_kind(docs, "ConfigMap"):
        names |= set(cm.get("data", {}))
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            names |= {e["name"] for e in c.get("env", [])}
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_manifests_set_is_a_setting(overlay: str) -> None:
    known = {"LIVERANK_" + name.upper() for name in Settings.model_fields}
    names = _variables(rendered(overlay))
    liverank = {n for n in names if n.startswith("LIVERANK_")}
    assert liverank and liverank <= known, liverank - known
    assert names - liverank <= OTHER_VARIABLES, names - liverank - OTHER_VARIABLES


def test_every_liverank_name_in_the_images_and_the_guide_is_a_setting() -> None:
    known = {"LIVERANK_" + name.upper() for name in Settings.model_fields} | {
        "LIVERANK_LOG_LEVEL"}
    paths = [*DEPLOY.glob("docker/*.Dockerfile"), *DEPLOY.glob("k8s/**/*.env"),
             *DEPLOY.glob("k8s/**/*.yaml"), DEPLOY.parent / "docs" / "deploy.md"]
    text = "\n".join(p.read_text() for p in paths)
    # the guide's example of what Service links would inject
    text = text.replace("LIVERANK_KAFKA_BOOTSTRAP_SERVICE_HOST", "")
    used = set(re.findall(r"LIVERANK_[A-Z0-9_]*[A-Z0-9]", text))
    assert used and used <= known, used - known


def test_web_host_is_the_faust_setting_for_the_address_peers_forward_to() -> None:
    from faust.types.settings import Settings as FaustSettings

    assert FaustSettings.SETTINGS["web_host"].env_name == "WEB_HOST"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_of_each_overlay_build(overlay: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings = rendered_settings(overlay, monkeypatch)
    assert settings.create_topics is (overlay == "dev")
    assert settings.data_dir == "/var/lib/liverank"
    if overlay == "prod":
        assert settings.security_protocol == "SASL_SSL"
        assert settings.sasl_mechanism == "SCRAM-SHA-512"
        assert settings.replication_factor == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_probes_volumes_and_lookup_service(overlay: str) -> None:
    docs = rendered(overlay)
    sts = one(docs, "StatefulSet", "liverank-service")
    spec = sts["spec"]["template"]["spec"]
    worker = next(c for c in spec["containers"] if c["name"] == "service")
    assert worker["args"][0] == "serve"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # table recovery
    # RocksDB state on the pod's own volume, at LIVERANK_DATA_DIR whatever the worker id
    settings = one(docs, "ConfigMap")["data"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts["state"] == settings["LIVERANK_DATA_DIR"]
    assert settings["LIVERANK_WORKER_ID"] not in mounts["state"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    # the model: copied from the model image by an init container, read-only to the worker
    model = next(c for c in spec["initContainers"] if c["name"] == "model")
    assert model["image"].split("/")[-1].startswith("liverank-model:")
    assert not model["image"].endswith(":unset"), "the overlay sets the model version"
    assert settings["LIVERANK_MODEL_DIR"].startswith(mounts["models"] + "/")
    assert model["command"][-1] == settings["LIVERANK_MODEL_DIR"]
    # headless Service named as the StatefulSet's serviceName, a PDB, the web port scraped
    service = one(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert one(docs, "PodDisruptionBudget", "liverank-service")["spec"]["maxUnavailable"] == 1
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == settings["LIVERANK_WEB_PORT"]
    web = {e["name"]: e.get("value") for e in worker["env"]}["WEB_HOST"]
    assert re.fullmatch(r"\$\(POD_NAME\)\.liverank-service\.\$\(POD_NAMESPACE\)\.svc", web)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_replay_train_export_are_created_suspended(overlay: str) -> None:
    jobs = {j["metadata"]["name"]: j for j in of_kind(rendered(overlay), "Job")}
    assert set(jobs) == {"liverank-replay", "liverank-train", "liverank-export"}
    for name, job in jobs.items():
        assert job["spec"]["suspend"] is True, name
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == name.removeprefix("liverank-"), name
    assert jobs["liverank-replay"]["spec"]["template"]["spec"]["containers"][0][
        "image"].split("/")[-1].startswith("liverank:")
    for name in ("liverank-train", "liverank-export"):
        image = jobs[name]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.split("/")[-1].startswith("liverank-trainer:"), name


def test_prod_connects_with_tls_and_scram_through_strimzis_secrets() -> None:
    docs = rendered("prod")
    kafka = one(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    listener = kafka["spec"]["kafka"]["listeners"][0]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    settings = one(docs, "ConfigMap")["data"]
    assert settings["LIVERANK_KAFKA_BOOTSTRAP"] == f"{cluster}-kafka-bootstrap:{listener['port']}"
    users = {u["metadata"]["name"] for u in of_kind(docs, "KafkaUser")}
    for name, spec in pod_specs(docs):
        for c in spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            if "LIVERANK_SASL_USERNAME" not in env:
                continue
            user = env["LIVERANK_SASL_USERNAME"]["value"]
            assert user in users, name
            secret = env["LIVERANK_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert secret == {"name": user, "key": "password"}, name
            ca = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volume = ca[settings["LIVERANK_SSL_CAFILE"].rsplit("/", 1)[0]]
            source = next(v for v in spec["volumes"] if v["name"] == volume)
            assert source["secret"]["secretName"] == f"{cluster}-cluster-ca-cert", name
    # the workers and the replay log in; nothing else talks to Kafka
    logged_in = {name for name, spec in pod_specs(docs) for c in spec["containers"]
                 if any(e["name"] == "LIVERANK_SASL_USERNAME" for e in c.get("env", []))}
    assert logged_in == {"StatefulSet/liverank-service", "Job/liverank-replay"}


def test_dev_runs_the_embedded_broker_with_one_worker() -> None:
    docs = rendered("dev")
    settings = one(docs, "ConfigMap")["data"]
    broker = one(docs, "Service", "liverank-broker")
    port = broker["spec"]["ports"][0]["port"]
    assert settings["LIVERANK_KAFKA_BOOTSTRAP"] == f"liverank-broker:{port}"
    assert settings["LIVERANK_BROKER_KIND"] == "tansu"
    deployment = one(docs, "Deployment", "liverank-broker")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == "broker"
    assert one(docs, "StatefulSet")["spec"]["replicas"] == 1
    assert not [d for d in docs if d["apiVersion"].startswith(CUSTOM_GROUPS)]


def test_deploy_readme_points_to_the_guide() -> None:
    assert "docs/deploy.md" in (DEPLOY / "README.md").read_text()


def test_configuration_reference_is_current() -> None:
    from liverank.core.settings import settings_markdown

    doc = DEPLOY.parent / "docs" / "configuration.md"
    assert doc.read_text() == settings_markdown(), "run: liverank config --markdown > " + str(doc)


def test_unknown_liverank_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVERANK_TOPK", "5")
    with pytest.raises(ValueError, match="LIVERANK_TOPK"):
        Settings()
