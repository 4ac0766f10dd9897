"""Deployment artefacts (issue 10): Dockerfile, Kubernetes manifests, systemd unit.

There is no cluster, no container engine and no kustomize binary from the registries on
this machine, so what can be checked is checked here instead:

- every Kubernetes manifest, as written and as the example overlay builds it, against the
  Kubernetes OpenAPI schemas shipped inside kubernetes-validate (offline, strict: unknown
  fields are errors), for the oldest and newest Kubernetes versions we claim;
- the Prometheus Operator kinds against the hand-kept CRD schemas in deploy/k8s/crds/;
- the kustomizations: every file they name exists, the overlay is built by a small model
  of kustomize (only the fields used here; any other field fails the test) and, where a
  `kubectl` binary happens to exist, compared with `kubectl kustomize`;
- the cross-references a cluster would only reveal at run time (selectors, port names,
  probe paths, mounts, drain bound, the PrometheusRule being deploy/prometheus/alerts.yml);
- the Dockerfile: its build stage's RUN lines are run verbatim into a temporary venv, then
  the console script is started with the image's ENTRYPOINT and the Deployment's args, as
  the image's non-root user, on a config directory laid out the way the kubelet lays out a
  ConfigMap, and polled with the image's HEALTHCHECK command;
- the systemd unit: parsed, read by `systemd-analyze verify` (no unknown key) and scored by
  `systemd-analyze security`, and its ExecStart, ExecReload, a self-service write
  (`gateway endpoints add` as the unit's user) and its stop signal exercised the same way.
"""

from __future__ import annotations

import base64
import configparser
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import referencing
import yaml

from bench.proc import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
CRDS = K8S / "crds"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UNIT = DEPLOY / "systemd" / "gateway.service"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DEPLOY_README = DEPLOY / "README.md"

# Contract §3: SIGTERM -> readiness fails, drain_delay, then drain_timeout for in-flight.
DRAIN_DELAY_S = 5
DRAIN_TIMEOUT_S = 20
# What must be left before the kubelet's (or systemd's) SIGKILL once the drain is over.
STOP_MARGIN_S = 3
# A ConfigMap holds at most 1 MiB (etcd's object limit); leave room for the object itself.
CONFIGMAP_MAX_BYTES = 1024 * 1024 - 16 * 1024

# Oldest Kubernetes minor we claim to support (deploy/README.md) and the newest whose
# schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition"}
# The kustomization fields the model below implements. Anything else must fail the test
# rather than be ignored.
KUSTOMIZE_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}


# ---------------------------------------------------------------------------------------
# Loading


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/k8s that holds Kubernetes objects (not kustomizations,
    not JSON patches)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs = load_docs(path)
        objects = docs and all(
            isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs
        )
        if objects and docs[0]["kind"] != "Kustomization":
            out.append(path)
    return out


def kustomization(directory: Path) -> dict[str, Any]:
    (doc,) = load_docs(directory / "kustomization.yaml")
    return doc


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# ---------------------------------------------------------------------------------------
# A model of `kustomize build`, for the fields in KUSTOMIZE_FIELDS only


def _generator_files(directory: Path, gen: dict[str, Any]) -> dict[str, Path]:
    files = {}
    for entry in gen.get("files", []):
        name, sep, rel = entry.partition("=")
        path = directory / (rel if sep else name)
        files[name if sep else path.name] = path
    return files


def _generate(directory: Path, gen: dict[str, Any], kind: str) -> dict[str, Any]:
    assert set(gen) <= {"name", "behavior", "files", "options"}, gen
    files = _generator_files(directory, gen)
    if kind == "ConfigMap":
        data = {k: p.read_text() for k, p in files.items()}
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": gen["name"]},
            "data": data,
        }
    data = {k: base64.b64encode(p.read_bytes()).decode() for k, p in files.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": gen["name"]},
        "type": "Opaque",
        "data": data,
    }


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json6902(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove / test, as kustomize applies a JSON patch."""
    obj = copy.deepcopy(obj)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            elif kind == "test":
                assert node[index] == op["value"], f"patch test failed at {op['path']}"
            else:
                raise AssertionError(f"unsupported patch op {kind}")
        else:
            if kind in ("replace", "remove", "test"):
                assert last in node, f"patch {kind} of a missing path {op['path']}"
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            elif kind == "test":
                assert node[last] == op["value"], f"patch test failed at {op['path']}"
            else:
                raise AssertionError(f"unsupported patch op {kind}")
    return obj


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
    }
    assert set(target) <= set(wanted), target
    return all(wanted[k] == v for k, v in target.items())


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        spec = obj["spec"]["template"]["spec"]
        return list(spec.get("containers", [])) + list(spec.get("initContainers", []))
    return []


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    k = kustomization(directory)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    unknown = set(k) - KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}: fields this test does not model: {sorted(unknown)}"
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        objs += kustomize_build(path) if path.is_dir() else load_docs(path)
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in k.get(field, []):
            new = _generate(directory, gen, kind)
            existing = [i for i, o in enumerate(objs) if key(o) == key(new)]
            behavior = gen.get("behavior", "create")
            if behavior == "create":
                assert not existing, f"{kind} {gen['name']} generated twice"
                objs.append(new)
            elif behavior == "replace":
                assert existing, f"{kind} {gen['name']}: behavior replace, but no base has it"
                objs[existing[0]] = new
            elif behavior == "merge":
                assert existing, f"{kind} {gen['name']}: behavior merge, but no base has it"
                objs[existing[0]]["data"].update(new["data"])
            else:
                raise AssertionError(f"unknown generator behavior {behavior}")
    for patch in k.get("patches", []):
        ops = load_docs(directory / patch["path"])[0]
        assert isinstance(ops, list), "only JSON 6902 patches are modelled"
        hits = [i for i, o in enumerate(objs) if _matches(o, patch["target"])]
        assert len(hits) == 1, f"patch {patch['path']} targets {len(hits)} objects"
        objs[hits[0]] = apply_json6902(objs[hits[0]], ops)
    for image in k.get("images", []):
        used = 0
        for obj in objs:
            for c in pod_containers(obj):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
                    used += 1
        assert used, f"images: {image['name']} is no container's image"
    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objs


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], dict[str, Any]]:
    objs = kustomize_build(OVERLAY)
    by_key = {key(o): o for o in objs}
    assert len(by_key) == len(objs), "two objects of the same kind and name"
    return by_key


def the(built: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for (k, _), o in built.items() if k == kind]
    return obj


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def arg(c: dict[str, Any], flag: str) -> str:
    args = c["args"]
    assert args.count(flag) == 1, f"{flag} given {args.count(flag)} times"
    return str(args[args.index(flag) + 1])


# ---------------------------------------------------------------------------------------
# Schemas


def k8s_definitions_registry() -> referencing.Registry:
    """kubernetes-validate's shared definitions, to check a custom resource's metadata
    against the real ObjectMeta schema."""
    version = K8S_VERSIONS[-1]
    defs = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    resource = referencing.Resource.from_contents(defs)
    return resource @ referencing.Registry()


OBJECT_META = {
    "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
}


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server applies it with kubectl's default
    `--validate=strict`: an object that lists its properties prunes anything else, and
    kubectl reports a pruned field as an error. Also moves RE2's mid-pattern `(?i)` to the
    front, where Python's re wants it."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^(?i)"):
        out["pattern"] = "(?i)^" + out["pattern"][len("^(?i)") :]
    return out


def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    group, _, version = api_version.partition("/")
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = load_docs(path)
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            schema = _strict(ver["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted(
                {*schema.get("required", []), "apiVersion", "kind", "metadata"}
            )
            jsonschema.Draft202012Validator.check_schema(schema)
            return jsonschema.Draft202012Validator(schema, registry=k8s_definitions_registry())
    raise AssertionError(f"no CRD schema for {kind} in {CRDS}")


def validate_object(obj: dict[str, Any]) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
        errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
        assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise AssertionError(
                f"{key(obj)} against Kubernetes {version}: {where}: {exc.message}"
            ) from None


# ---------------------------------------------------------------------------------------
# Schema validation


def test_validator_works_offline_and_is_strict() -> None:
    # The schemas come from the installed package (no network here), and strict mode
    # really refuses unknown fields: the checks below would be worthless otherwise.
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**obj, "dta": {}}, K8S_VERSIONS[-1], strict=True)
    pm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "admin", "intervall": "5s"}]},
    }
    with pytest.raises(AssertionError, match="intervall"):
        validate_object(pm)
    with pytest.raises(AssertionError, match="selector"):
        validate_object({**pm, "spec": {"podMetricsEndpoints": [{"port": "admin"}]}})
    # A custom resource's metadata is checked against the real ObjectMeta schema.
    with pytest.raises(AssertionError, match="lables"):
        validate_object({**pm, "metadata": {"name": "x", "lables": {}}})


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_file_validates(path: Path) -> None:
    for obj in load_docs(path):
        validate_object(obj)


def test_every_built_object_validates(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = {k for k, _ in built}
    assert kinds >= {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "PodMonitor",
        "PrometheusRule",
    }
    for obj in built.values():
        validate_object(obj)


def test_crd_schemas_are_valid_crds() -> None:
    found = set()
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = load_docs(path)
        validate_object(crd)  # a CustomResourceDefinition, apiextensions.k8s.io/v1
        names = crd["spec"]["names"]
        assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
        for ver in crd["spec"]["versions"]:
            jsonschema.Draft202012Validator.check_schema(_strict(ver["schema"]["openAPIV3Schema"]))
            found.add((f"{crd['spec']['group']}/{ver['name']}", names["kind"]))
    assert found >= CRD_KINDS
    assert "hand-kept subset" in (CRDS / "README.md").read_text()
    assert "hand-kept subset" in DEPLOY_README.read_text()


# ---------------------------------------------------------------------------------------
# Kustomizations


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kustomization_references_exist(directory: Path) -> None:
    k = kustomization(directory)
    for res in k.get("resources", []):
        path = directory / res
        assert path.exists(), f"{directory.name}: resource {res} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{res} is not a kustomization"
    for field in ("configMapGenerator", "secretGenerator"):
        for gen in k.get(field, []):
            for name, path in _generator_files(directory, gen).items():
                assert path.is_file(), f"{field} {gen['name']}: {name} -> {path} missing"
            # No hash suffix: the object keeps its name, so an apply updates it in place and
            # the kubelet refreshes the mount (a new name would mean a rolling restart).
            assert gen.get("options", {}).get("disableNameSuffixHash") is True, gen["name"]
    for patch in k.get("patches", []):
        assert (directory / patch["path"]).is_file(), patch["path"]
        assert "target" in patch, "every patch names its target"


def test_overlay_builds_from_base(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    k = kustomization(OVERLAY)
    bases = [r for r in k["resources"] if (OVERLAY / r).is_dir()]
    assert [(OVERLAY / b).resolve() for b in bases] == [BASE.resolve()]
    # Every patch target and replaced generator exists in what the base provides.
    base_objs = {key(o) for o in kustomize_build(BASE)}
    for patch in k["patches"]:
        t = patch["target"]
        assert (t["kind"], t["name"]) in base_objs, t
    for gen in k.get("configMapGenerator", []):
        if gen.get("behavior") in ("replace", "merge"):
            assert ("ConfigMap", gen["name"]) in base_objs
    ns = k["namespace"]
    assert built[("Namespace", ns)]
    for (kind, _), obj in built.items():
        if kind not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == ns
    # The example patch kept its intent.
    c = container(built[("Deployment", "gateway")])
    assert arg(c, "--workers") == "1"
    assert c["image"] == "registry.example.com/secure-endpoints-gateway:0.1.0"
    assert built[("PodMonitor", "gateway")]["metadata"]["labels"]["release"]


def test_model_agrees_with_kubectl_kustomize(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl binary: the kustomize model above is the only build check")
    out = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    real = {key(o): o for o in yaml.safe_load_all(out) if o}
    assert real == built


# ---------------------------------------------------------------------------------------
# What the manifests promise each other


def test_allowlist_configmap(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    for directory in (BASE, OVERLAY):
        raw = (directory / "config.json").read_bytes()
        assert len(raw) < CONFIGMAP_MAX_BYTES
        doc = json.loads(raw)
        # The mount is read-only and shared: changes go through the ConfigMap, and every
        # write through a pod's admin API is refused with 409 saying so.
        assert doc["management"] == "external", directory
    cm = built[("ConfigMap", "gateway-config")]
    assert cm["data"]["config.json"] == (OVERLAY / "config.json").read_text()
    assert json.loads(cm["data"]["config.json"])["management"] == "external"


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_allowlist_passes_gateway_check(directory: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(directory / "config.json")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_admin_tokens_secret(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    secret = built[("Secret", "gateway-admin-tokens")]
    tokens = json.loads(base64.b64decode(secret["data"]["tokens.json"]))
    assert isinstance(tokens, list)
    for entry in tokens:
        assert set(entry) == {"name", "role", "sha256"}
        assert entry["role"] in ("admin", "viewer")
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


def test_config_mounted_as_directory(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = built[("Deployment", "gateway")]
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for ctr in pod["containers"] + pod.get("initContainers", []):
        for m in ctr.get("volumeMounts", []):
            # A subPath mount is a bind mount of one file taken at start: it never sees the
            # kubelet's ..data swap, so the gateway would never reload.
            assert "subPath" not in m and "subPathExpr" not in m, m
    for flag, kind, source_key in (
        ("--config", "ConfigMap", "configMap"),
        ("--admin-tokens", "Secret", "secret"),
    ):
        path = arg(c, flag)
        mount = mounts[os.path.dirname(path)]
        assert mount.get("readOnly") is True
        volume = volumes[mount["name"]]
        ref = volume[source_key]
        name = ref["name"] if kind == "ConfigMap" else ref["secretName"]
        obj = built[(kind, name)]
        assert os.path.basename(path) in obj["data"], f"{flag} {path}: no such key in {kind} {name}"
        assert "items" not in ref, "items would rename or drop keys"
    # The root file system is read-only: /tmp is the one writable place.
    assert volumes[mounts["/tmp"]["name"]].get("emptyDir") is not None


def test_pod_security(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = built[("Deployment", "gateway")]
    pod = dep["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    csc = container(dep)["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in csc["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    # The image's USER is the same uid, so `docker run` and the pod agree.
    user = dockerfile_stages()[-1].user
    assert user == f"{psc['runAsUser']}:{psc['runAsGroup']}"


def test_probes_ports_and_selectors(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = built[("Deployment", "gateway")]
    c = container(dep)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin_port = int(arg(c, "--admin-listen").rpartition(":")[2])
    public_port = int(arg(c, "--listen").rpartition(":")[2])
    assert arg(c, "--admin-listen").startswith("0.0.0.0:"), (
        "kubelet and Prometheus come from outside"
    )
    assert ports == {"http": public_port, "admin": admin_port}
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == admin_port, probe
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    assert env["GATEWAY_ADMIN_PORT"] == str(admin_port)

    def selects(selector: dict[str, Any]) -> bool:
        assert set(selector) == {"matchLabels"}
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    assert selects(dep["spec"]["selector"])
    svc = built[("Service", "gateway")]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    for p in svc["spec"]["ports"]:
        # The admin listener (API, metrics) is never behind a Service.
        assert p["targetPort"] == "http", p
    assert selects(built[("PodDisruptionBudget", "gateway")]["spec"]["selector"])
    pm = built[("PodMonitor", "gateway")]
    assert selects(pm["spec"]["selector"])
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == admin_port and endpoint["path"] == "/metrics"


def test_replicas_autoscaling_and_disruption(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = built[("Deployment", "gateway")]
    hpa = the(built, "HorizontalPodAutoscaler")
    pdb = the(built, "PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "gateway",
    )
    # The HPA owns the count; a replicas field would reset it at every apply.
    assert "replicas" not in dep["spec"]
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    # Utilization is measured against the CPU request, which must exist; one worker per
    # requested CPU (`auto` would count the node's CPUs).
    c = container(dep)
    assert "cpu" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]
    assert int(arg(c, "--workers")) == int(c["resources"]["requests"]["cpu"])


def test_grace_period_covers_the_drain(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = built[("Deployment", "gateway")]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert "exec" not in c.get("lifecycle", {}).get("preStop", {}), "use preStop.sleep, not a shell"
    needed = pre_stop + DRAIN_DELAY_S + DRAIN_TIMEOUT_S + STOP_MARGIN_S
    grace = pod["terminationGracePeriodSeconds"]
    assert needed <= grace <= needed + 10, (needed, grace)
    # No drain flags override the contract's defaults the grace period was computed from.
    assert not any(a.startswith("--drain") for a in c["args"])


def test_prometheusrule_is_alerts_yml(built: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert ALERTS.is_file(), f"{ALERTS} is missing: the PrometheusRule must be a copy of it"
    alerts = yaml.safe_load(ALERTS.read_text())
    (rule,) = load_docs(BASE / "prometheusrule.yaml")
    assert set(alerts) == {"groups"}
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/k8s/base/prometheusrule.yaml drifted from deploy/prometheus/alerts.yml: copy the"
        " file's groups: block under spec:, indented by two spaces"
    )
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names are the list-map key"
    assert built[("PrometheusRule", "gateway")]["spec"] == rule["spec"]


# ---------------------------------------------------------------------------------------
# Dockerfile


class Stage:
    def __init__(self, base: str, name: str) -> None:
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def all(self, instr: str) -> list[str]:
        return [rest for i, rest in self.instructions if i == instr]

    def one(self, instr: str) -> str:
        (rest,) = self.all(instr)
        return rest

    @property
    def user(self) -> str:
        return self.one("USER")

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for rest in self.all("ENV"):
            for token in shlex.split(rest):
                k, sep, v = token.partition("=")
                assert sep, f"ENV {rest}: use the KEY=VALUE form"
                out[k] = v
        return out


def dockerfile_lines() -> list[tuple[str, str]]:
    out = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    assert not pending
    return out


def dockerfile_args() -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults."""
    out: dict[str, str] = {}
    for instr, rest in dockerfile_lines():
        if instr == "FROM":
            break
        name, _, default = rest.partition("=")
        out[name] = default
    return out


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for instr, rest in dockerfile_lines():
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, rest
            stages.append(Stage(m.group(1), m.group(2) or str(len(stages))))
        elif stages:
            stages[-1].instructions.append((instr, rest))
        else:
            assert instr == "ARG", f"{instr} before the first FROM"
    return stages


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    rest = stage.one("HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
    assert m, f"HEALTHCHECK must use the exec form: {rest}"
    return exec_form(m.group(1))


def test_dockerfile_shape() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, runtime = stages[0], stages[-1]
    # The venv is copied, with a compiled extension in it: the same Python release in both
    # stages, the build stage in the image variant that has gcc and Python's headers.
    args = dockerfile_args()
    build_image = _expand(build.base, args)
    runtime_image = _expand(runtime.base, args)
    m = re.fullmatch(r"python:(3\.\d+)-slim-(\w+)", runtime_image)
    assert m, runtime_image
    assert build_image == f"python:{m.group(1)}-{m.group(2)}", (build_image, runtime_image)
    assert any(rest.startswith(f"--from={build.name} ") for rest in runtime.all("COPY"))
    assert not runtime.all("RUN"), "the runtime stage only copies the venv"
    uid, _, gid = runtime.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert exec_form(runtime.one("ENTRYPOINT")) == ["gateway", "run"]
    cmd = exec_form(runtime.one("CMD"))
    assert cmd[cmd.index("--config") + 1] == "/etc/gateway/config.json"
    assert cmd[cmd.index("--admin-listen") + 1] == "0.0.0.0:" + runtime.env()["GATEWAY_ADMIN_PORT"]
    health = healthcheck_command(runtime)
    assert "/healthz" in " ".join(health)
    assert "--start-period" in runtime.one("HEALTHCHECK")
    # The same pip command runs in the image and in test_image_build_and_run below.
    assert '"$VENV/bin/pip" install --no-cache-dir .' in build.all("RUN")
    # The build stage compiles the fast engine, refusing to fall back to the interpreted one,
    # with the compiler pinned as the project pins it for `make compile`.
    (compile_step,) = [r for r in build.all("RUN") if "compile_fast.py" in r]
    assert "GATEWAY_REQUIRE_COMPILED=1" in compile_step and "--install" in compile_step
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for pin in ("mypy", "setuptools"):
        (spec,) = [d.split("#")[0].strip() for d in dev["dev"] if re.match(pin + r"\b", d)]
        assert any(f'"{spec}"' in r for r in build.all("RUN")), (pin, spec)


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: path globs (`**` spans directories), a path is
    excluded when it or a parent matches, `!` re-includes, the last match wins."""
    pats = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line[1:].strip() if negate else line
        glob = glob.strip("/")
        rx, i = "", 0
        while i < len(glob):
            if glob.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif glob[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif glob[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif glob[i] == "[":
                j = glob.index("]", i)
                rx, i = rx + glob[i : j + 1], j + 1
            else:
                rx, i = rx + re.escape(glob[i]), i + 1
        pats.append((negate, re.compile(rx + r"\Z")))
    return pats


def docker_ignored(rel: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, rx in _dockerignore():
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore() -> None:
    kept_out = [
        ".git/config",
        ".venv/bin/python",
        "tests/test_hosts.py",
        "deploy/Dockerfile",
        "deploy/k8s/overlays/example/tokens.json",
        "bench/results/x.json",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "secure_endpoints_gateway.egg-info/PKG-INFO",
        "build/lib/gateway/cli.py",
    ]
    for rel in kept_out:
        assert docker_ignored(rel), rel
    kept_out.append("scripts/ensure-apt.sh")
    for rel in (
        "pyproject.toml",
        "README.md",
        "gateway/cli.py",
        "gateway/examples/x.json",
        "scripts/compile_fast.py",
    ):
        assert not docker_ignored(rel), rel


def stage_context(build: Stage, root: Path) -> Path:
    """Lay out the build stage's WORKDIR as its COPY lines would, from the repository
    filtered by .dockerignore. Returns the WORKDIR."""
    workdir = root / build.one("WORKDIR").lstrip("/")
    workdir.mkdir(parents=True)
    for rest in build.all("COPY"):
        assert not rest.startswith("--"), rest
        *sources, dest = rest.split()
        copied = 0
        for src in sources:
            for path in sorted(REPO.glob(src.rstrip("/"))):
                rel = path.relative_to(REPO).as_posix()
                if docker_ignored(rel):
                    continue
                if path.is_dir():
                    for f in sorted(path.rglob("*")):
                        frel = f.relative_to(REPO).as_posix()
                        if f.is_file() and not docker_ignored(frel):
                            target = workdir / dest / f.relative_to(path)
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(f, target)
                            copied += 1
                else:
                    target = workdir / dest / path.name if dest.endswith("/") else workdir / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                    copied += 1
        assert copied, f"COPY {rest}: no source file in the context (docker build would fail)"
    return workdir


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


# The image's user. As root, the test drops to it so that, as in the pod, nothing but the
# temporary directory is writable for the gateway.
IMAGE_UID = 10001


def _as_image_user() -> dict[str, Any]:
    return {"user": IMAGE_UID, "group": IMAGE_UID, "extra_groups": []} if os.geteuid() == 0 else {}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.fullmatch(name + r"(?:\{(.*)\})?\s+(\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def _world_usable(path: Path) -> bool:
    """Can another user run this interpreter: every directory on the way traversable, the
    installation readable?"""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in path.parents) and bool(path.stat().st_mode & 0o005)


def base_python() -> Path:
    """The interpreter the venv is built from: this one's base installation, unless the
    image user could not use it (a pyenv under /root), then the system's Python >= 3.11."""
    candidates = [Path(getattr(sys, "_base_executable", sys.executable)), Path("/usr/bin/python3")]
    for cand in candidates:
        if not cand.exists() or not _world_usable(cand):
            continue
        version = subprocess.run(
            [str(cand), "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if version.stdout.strip() == "True":
            return cand
    if os.geteuid() == 0:
        raise AssertionError(f"no Python >= 3.11 with venv usable by uid {IMAGE_UID}: {candidates}")
    return Path(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A world-readable scratch directory (the image user must read the venv)."""
    root = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_venv(image_root: Path) -> Path:
    """Run the Dockerfile's build stage: its RUN lines, verbatim, with its ENV, in a
    WORKDIR laid out by its COPY lines; only VENV points at a temporary directory."""
    build = dockerfile_stages()[0]
    venv = image_root / "opt" / "gateway"
    venv.parent.mkdir(parents=True)
    workdir = stage_context(build, image_root / "build")
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    # `python` on PATH, like the image's /usr/local/bin/python.
    shim = image_root / "shim"
    shim.mkdir()
    (shim / "python").symlink_to(base_python())
    env["PATH"] = f"{shim}:{env['PATH']}"
    for k, v in build.env().items():
        env[k] = _expand(v, env)
    assert build.env()["VENV"] == "/opt/gateway"
    env["VENV"] = str(venv)
    for cmd in build.all("RUN"):
        proc = subprocess.run(
            ["/bin/sh", "-c", cmd],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert proc.returncode == 0, f"RUN {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return venv


def kubelet_volume(root: Path, files: dict[str, bytes], mode: int, gid: int | None) -> Path:
    """A ConfigMap/Secret volume as the kubelet writes it: the files in a timestamped
    directory, `..data` pointing at it, one symlink per key through `..data`."""
    root.mkdir(parents=True)
    ts = root / "..2026_01_01_00_00_00.000000001"
    ts.mkdir()
    for name, content in files.items():
        (ts / name).write_bytes(content)
        (ts / name).chmod(mode)
        if gid is not None and os.geteuid() == 0:
            os.chown(ts / name, 0, gid)
        (root / name).symlink_to(Path("..data") / name)
    (root / "..data").symlink_to(ts.name)
    for d in (root, ts):
        d.chmod(0o755)
    return root


def _wait_healthy(health: list[str], env: dict[str, str], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"gateway exited {proc.returncode}: {proc.communicate()[1][-3000:]}"
        )
        check = subprocess.run(health, env=env, capture_output=True, timeout=10, **_as_image_user())
        if check.returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("HEALTHCHECK never passed")


def _kill(proc: subprocess.Popen[str]) -> str:
    """Make sure the process is gone; its stderr."""
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[1]


def _ready(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:  # the admin listener already closed: not ready either
        return False


def _stop(proc: subprocess.Popen[str], within: float) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=within + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {within + 5} s after SIGTERM") from None
    return time.monotonic() - start


@pytest.mark.slow
def test_image_build_and_run(
    image_venv: Path, image_root: Path, built: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """ENTRYPOINT + the Deployment's args, as the image user, with the pod's volumes laid
    out like the kubelet's; HEALTHCHECK, readiness, the config sha256, and the SIGTERM
    drain within terminationGracePeriodSeconds."""
    runtime = dockerfile_stages()[-1]
    dep = built[("Deployment", "gateway")]
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, Path] = {}
    for m in c["volumeMounts"]:
        vol = volumes[m["name"]]
        host = image_root / "pod" / m["mountPath"].lstrip("/")
        if "configMap" in vol:
            data = built[("ConfigMap", vol["configMap"]["name"])]["data"]
            kubelet_volume(host, {k: v.encode() for k, v in data.items()}, 0o644, None)
        elif "secret" in vol:
            data = built[("Secret", vol["secret"]["secretName"])]["data"]
            files = {k: base64.b64decode(v) for k, v in data.items()}
            kubelet_volume(
                host, files, vol["secret"]["defaultMode"], pod["securityContext"]["fsGroup"]
            )
        else:
            host.mkdir(parents=True)
            host.chmod(0o1777)
        mounts[m["mountPath"]] = host
    public, admin = free_port(), free_port()
    addresses = {
        arg(c, "--listen"): f"127.0.0.1:{public}",
        arg(c, "--admin-listen"): f"127.0.0.1:{admin}",
    }

    def host_path(value: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return addresses.get(value, value)

    argv = exec_form(runtime.one("ENTRYPOINT")) + [host_path(a) for a in c["args"]]
    env = {"PATH": os.environ["PATH"], "HOME": "/"}
    for k, v in runtime.env().items():
        env[k] = _expand(v.replace("/opt/gateway", str(image_venv)), env)
    for e in c.get("env", []):
        env[e["name"]] = e["value"]
    env["GATEWAY_ADMIN_PORT"] = str(admin)
    env["TMPDIR"] = str(mounts["/tmp"])
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    assert argv[0] == str(image_venv / "bin" / "gateway")
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **_as_image_user(),
    )
    try:
        _wait_healthy(healthcheck_command(runtime), env, proc)
        readyz = f"http://127.0.0.1:{admin}{c['readinessProbe']['httpGet']['path']}"
        assert _get(readyz)[0] == 200
        _, metrics = _get(f"http://127.0.0.1:{admin}/metrics")
        want = hashlib.sha256((OVERLAY / "config.json").read_bytes()).hexdigest()
        assert {labels["sha256"] for labels, _ in _metric(metrics, "gateway_config_info")} == {want}
        # The drain the grace period and the absent preStop hook are built on: readiness
        # fails at once, the public listener still answers during drain_delay, exit 0.
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while _ready(readyz):
            assert time.monotonic() - start < 2, "still ready 2 s after SIGTERM"
            time.sleep(0.1)
        unknown = urllib.request.Request(
            f"http://127.0.0.1:{public}/", headers={"Host": "unknown.example"}
        )
        try:
            urllib.request.urlopen(unknown, timeout=3)
            raise AssertionError("an unknown Host was let through")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503  # answered by the gateway: still serving
        assert time.monotonic() - start < DRAIN_DELAY_S
        proc.wait(timeout=pod["terminationGracePeriodSeconds"] + 5)
        elapsed = time.monotonic() - start
    except BaseException as exc:
        exc.add_note(f"gateway stderr:\n{_kill(proc)[-3000:]}")
        raise
    stderr = _kill(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert elapsed < pod["terminationGracePeriodSeconds"], elapsed
    # The image runs the fast engine's compiled build (the build stage made it), as the
    # benchmarks measure it, not its interpreted sources.
    assert "fast engine build=compiled" in stderr, stderr[-3000:]
    # A read-only mount and a non-root user: nothing was written beside the config.
    assert sorted(p.name for p in mounts["/etc/gateway"].iterdir()) == sorted(
        ["..data", "..2026_01_01_00_00_00.000000001", "config.json"]
    )


# ---------------------------------------------------------------------------------------
# systemd


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit file as systemd reads it: sections of keys, each key possibly repeated."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, line
        k, sep, v = line.partition("=")
        assert sep, line
        current.setdefault(k.strip(), []).append(v.strip())
    # configparser agrees on the structure (it keeps only the last of repeated keys).
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    assert set(cp.sections()) == set(sections)
    return sections


def test_systemd_unit() -> None:
    u = unit()
    svc = {k: v[-1] for k, v in u["Service"].items()}
    start = shlex.split(svc["ExecStart"])
    assert start[:2] == ["/opt/gateway/bin/gateway", "run"]
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM"
    assert int(svc["TimeoutStopSec"]) >= DRAIN_DELAY_S + DRAIN_TIMEOUT_S + STOP_MARGIN_S
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["User"] not in ("root", "0") and svc["User"] == svc["Group"]
    assert svc["StateDirectory"] == "gateway"
    config = start[start.index("--config") + 1]
    tokens = start[start.index("--admin-tokens") + 1]
    writable = svc["ReadWritePaths"].split()
    # Self-service writes: the config is replaced through a temp file in its directory,
    # and the audit log is written next to it. The tokens file is never written.
    assert os.path.dirname(config) in writable
    assert not any(tokens.startswith(w + "/") for w in writable)
    assert start[start.index("--admin-listen") + 1].startswith("127.0.0.1:")
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    sysusers = (DEPLOY / "systemd" / "gateway.sysusers.conf").read_text()
    assert re.search(rf"^u {svc['User']} ", sysusers, re.MULTILINE)
    tmpfiles = (DEPLOY / "systemd" / "gateway.tmpfiles.conf").read_text()
    config_dir, tokens_dir = (re.escape(os.path.dirname(p)) for p in (config, tokens))
    assert re.search(rf"^d\s+{config_dir}\s+07[0-7]0\s+{svc['User']}\s", tmpfiles, re.M)
    assert re.search(rf"^d\s+{tokens_dir}\s+0750\s+root\s+{svc['Group']}\s", tmpfiles, re.M)


def test_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own reading of the unit: no unknown or misspelled key (`verify`, with the
    not-yet-installed ExecStart binary swapped for `true`), and an exposure score of at
    most 2.5 ("OK") from `security`."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze not installed (Debian package systemd); test_systemd_unit still runs"
        )
    copy_ = tmp_path / UNIT.name
    copy_.write_text(
        UNIT.read_text().replace("/opt/gateway/bin/gateway", shutil.which("true") or "/bin/true")
    )
    verify = subprocess.run(
        [analyze, "verify", "--man=no", str(copy_)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stderr
    security = subprocess.run(
        # Exposure on systemd's 0-100 scale (printed divided by ten).
        [analyze, "security", "--offline=true", "--threshold=25", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr[-3000:]


def test_install_docs_use_the_image_commands() -> None:
    """The systemd install in deploy/README.md builds /opt/gateway with the Dockerfile's
    own build commands, so the test that runs them covers both."""
    readme = DEPLOY_README.read_text()
    for cmd in dockerfile_stages()[0].all("RUN"):
        assert cmd in readme, f"deploy/README.md does not show: {cmd}"
    assert "VENV=/opt/gateway" in readme
    assert "not built on this machine" in readme


@pytest.mark.slow
def test_systemd_exec_lines(image_venv: Path, image_root: Path) -> None:
    """ExecStart (paths moved to a scratch directory, as the unit's User), ExecReload's
    SIGHUP reloads, a self-service write lands in the writable config directory, and
    KillSignal drains within TimeoutStopSec."""
    svc = {k: v[-1] for k, v in unit()["Service"].items()}
    etc = image_root / "etc"
    cfg_dir, tok_dir = etc / "gateway", etc / "gateway-tokens"
    cfg_dir.mkdir(parents=True)
    tok_dir.mkdir()
    config = json.loads((OVERLAY / "config.json").read_text())
    config["management"] = "file"  # one machine: the gateway owns the file
    (cfg_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tok_dir / "tokens.json").write_text("[]\n")
    for d, mode in ((etc, 0o755), (cfg_dir, 0o750), (tok_dir, 0o750)):
        d.chmod(mode)
    (cfg_dir / "config.json").chmod(0o640)
    (tok_dir / "tokens.json").chmod(0o640)
    if os.geteuid() == 0:  # as gateway.tmpfiles.conf sets them, with the image uid
        for p in (cfg_dir, cfg_dir / "config.json"):
            os.chown(p, IMAGE_UID, IMAGE_UID)
        for p in (tok_dir, tok_dir / "tokens.json"):
            os.chown(p, 0, IMAGE_UID)
    public, admin = free_port(), free_port()
    start = shlex.split(svc["ExecStart"])
    swaps = {
        "/opt/gateway/": f"{image_venv}/",
        "/etc/gateway/": f"{cfg_dir}/",
        "/etc/gateway-tokens/": f"{tok_dir}/",
    }
    addresses = {"127.0.0.1:9180": f"127.0.0.1:{admin}", "0.0.0.0:8080": f"127.0.0.1:{public}"}
    argv = []
    for a in start:
        for old, new in swaps.items():
            if a.startswith(old):
                a = new + a[len(old) :]
        argv.append(addresses.get(a, a))
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **_as_image_user(),
    )
    try:
        health = [
            str(image_venv / "bin" / "python"),
            "-c",
            healthcheck_command(dockerfile_stages()[-1])[2],
        ]
        _wait_healthy(health, {**env, "GATEWAY_ADMIN_PORT": str(admin)}, proc)

        def served_sha() -> set[str]:
            _, text = _get(f"http://127.0.0.1:{admin}/metrics")
            return {labels["sha256"] for labels, _ in _metric(text, "gateway_config_info")}

        def wait_for_sha(path: Path) -> None:
            want = hashlib.sha256(path.read_bytes()).hexdigest()
            deadline = time.monotonic() + 15
            while served_sha() != {want}:
                assert time.monotonic() < deadline, f"never served {want}: {served_sha()}"
                time.sleep(0.2)

        wait_for_sha(cfg_dir / "config.json")
        # `systemctl reload`: SIGHUP must reload, not kill (Python's default for SIGHUP).
        reload_argv = [a.replace("$MAINPID", str(proc.pid)) for a in shlex.split(svc["ExecReload"])]
        subprocess.run(reload_argv, check=True, timeout=10)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGHUP stopped the gateway"
        _wait_healthy(health, {**env, "GATEWAY_ADMIN_PORT": str(admin)}, proc)
        # A self-service write as the unit's user: the temp file, the rename and the audit
        # log all land in the config directory, which must be writable; then it is live.
        gateway = str(image_venv / "bin" / "gateway")
        cli = [
            gateway,
            "endpoints",
            "add",
            "--config",
            str(cfg_dir / "config.json"),
            "production",
            "new.acme.com",
        ]
        add = subprocess.run(
            cli, env=env, capture_output=True, text=True, timeout=60, **_as_image_user()
        )
        assert add.returncode == 0, add.stdout + add.stderr
        doc = json.loads((cfg_dir / "config.json").read_text())
        assert "new.acme.com" in doc["environments"][0]["secure_endpoints"]
        subprocess.run(reload_argv, check=True, timeout=10)
        wait_for_sha(cfg_dir / "config.json")
        elapsed = _stop(proc, float(svc["TimeoutStopSec"]))
    except BaseException as exc:
        exc.add_note(f"gateway stderr:\n{_kill(proc)[-3000:]}")
        raise
    stderr = _kill(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert elapsed < float(svc["TimeoutStopSec"])
