#!/usr/bin/env python3
"""Tests of the keyscope Helm chart (helm/keyscope), the Dockerfile and docs/deploy.md.

Run from anywhere: `python3 helm/tests/test_chart.py` (exit status 0 only if every test passes).
Needs PyPI `helm-python-sdk` (Helm's own engine, no helm binary) and `kubernetes-validate`
(offline Kubernetes JSON schemas); `.ci/run` installs both.

What it does: lints the chart (defaults and all-on values), renders it with the defaults,
with every optional part on (all-on.yaml) and a few more combinations, validates every
rendered manifest against the Kubernetes schemas in strict mode (and the ServiceMonitor, a CRD
the schemas do not have, against a schema written here), and checks what matters: probes,
secrets only in the Secret, secretKeyRefs, security contexts, ports, the graceful-shutdown
arithmetic, the rendered keyscope configuration, and that bad values fail the render.

keyscope itself then checks what the chart would run: for every combination, the rendered
config.yaml with the Deployment's environment (secret values filled in from the test's values)
goes through `keyscope serve --check-config`, with test certificates (made with `openssl`)
where the chart mounts TLS files. The binary is $KEYSCOPE_BIN (`cargo test` sets it: see
tests/chart.rs), else target/debug/keyscope; without one these tests fail, never skip.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as missing:  # pragma: no cover - the message is the point
    sys.exit(
        f"test_chart.py: {missing}. Install the test dependencies: "
        "python3 -m pip install helm-python-sdk kubernetes-validate"
    )

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "keyscope"
TESTS = ROOT / "helm" / "tests"
ALL_ON = TESTS / "all-on.yaml"
RELEASE, NAMESPACE = "ks", "auth"

# Kubernetes versions the manifests are validated against: the chart's floor (kubeVersion
# >=1.27) and a recent one.
KUBE_VERSIONS = ["1.27.0", "1.33.0"]

# Where keyscope's container finds things (the chart's contract with the image and the config).
CONFIG_PATH = "/etc/keyscope/config.yaml"
GRPC_PORT, HTTP_PORT = 50051, 9464



def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


ALL_ON_VALUES = load_yaml(ALL_ON)
DEFAULT_VALUES = load_yaml(CHART / "values.yaml")
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def merge(base: dict, over: dict) -> dict:
    """Deep merge, `over` winning (as Helm merges values files)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_chart = None


def chart():
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(str(CHART))
    return _chart


_renders: dict[str, dict[str, str]] = {}


def render(values: dict | None = None) -> dict[str, str]:
    """Renders the chart (cached by values); returns template path -> text."""
    key = json.dumps(values, sort_keys=True)
    if key not in _renders:
        _renders[key] = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return _renders[key]


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """Every Kubernetes object rendered, as (template path, object)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise AssertionError(f"{path}: a document that is not an object: {doc!r}")
            out.append((path, doc))
    return out


def objects(values: dict | None = None) -> list[tuple[str, dict]]:
    return manifests(render(values))


def only(values: dict | None, kind: str, name_suffix: str = "") -> dict:
    found = [o for _, o in objects(values) if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} named *{name_suffix}, found {len(found)}")
    return found[0]


def keyscope_deployment(values: dict | None = None) -> dict:
    deps = [
        o
        for _, o in objects(values)
        if o["kind"] == "Deployment" and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
    ]
    if len(deps) != 1:
        raise AssertionError(f"expected one keyscope Deployment, found {len(deps)}")
    return deps[0]


def keyscope_container(values: dict | None = None) -> dict:
    containers = keyscope_deployment(values)["spec"]["template"]["spec"]["containers"]
    named = [c for c in containers if c["name"] == "keyscope"]
    if len(named) != 1:
        raise AssertionError(f"expected one container named keyscope, found {[c['name'] for c in containers]}")
    return named[0]


def rendered_config(values: dict | None = None) -> dict:
    cm = only(values, "ConfigMap")
    text = cm["data"]["config.yaml"]
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise AssertionError(f"ConfigMap {cm['metadata']['name']}: config.yaml is not a YAML map: {text!r}")
    return config


def render_error(values: dict) -> str:
    """The error of a render that must fail; fails the test if it renders."""
    try:
        chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"the render succeeded but must fail, values: {json.dumps(values)}")


# Values used by several tests.
EXTERNAL = {}  # the defaults: external Redis at redis.url
TLS_ON = {"tls": {"enabled": True, "secretName": "keyscope-grpc-tls", "clientAuth": "optional"}}
MEMORY = {"replicaCount": 1, "config": {"store": {"kind": "memory"}}}
EXISTING = merge(ALL_ON_VALUES, {"existingSecret": "keyscope-secrets", "pepper": "", "bootstrapAdminToken": "", "redis": {"password": ""}})
REDIS_TLS_CLUSTER = {
    "redis": {
        "url": "rediss://redis-0.redis.svc:6380,rediss://redis-1.redis.svc:6381",
        "cluster": True,
        "username": "keyscope",
        "password": "REDISPW-cluster-secret-9876",
        "tls": {"enabled": True, "secretName": "redis-ca"},
    },
    "networkPolicy": {"enabled": True},
    "telemetry": {"otlpEndpoint": "http://otel-collector.observability.svc:4317"},
    "serviceAccount": {"create": False},
    "podDisruptionBudget": {"enabled": False},
    "pepper": "PEPPER-cluster-0123456789-abcdefghij",
}
COMBINATIONS = {
    "defaults": EXTERNAL,
    "all-on": ALL_ON_VALUES,
    "all-on with existingSecret": EXISTING,
    "tls on": TLS_ON,
    "memory store, one replica": MEMORY,
    "redis cluster over tls": REDIS_TLS_CLUSTER,
    "evaluation redis": {"redis": {"evaluation": {"enabled": True}}},
}

# A small schema of the ServiceMonitor fields the chart renders (monitoring.coreos.com/v1 is a
# CRD, not in the Kubernetes schemas); closed, so an unexpected field fails.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def validate_object(where: str, obj: dict) -> None:
    """Validates one rendered object; unknown kinds fail."""
    if obj.get("apiVersion") == "monitoring.coreos.com/v1" and obj.get("kind") == "ServiceMonitor":
        try:
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{where}: ServiceMonitor: {e.message} at {'.'.join(map(str, e.absolute_path))}") from None
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            raise AssertionError(f"{where}: unknown kind {obj.get('apiVersion')}/{obj.get('kind')} for Kubernetes {version}: {e.message}") from None
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.absolute_path))
            raise AssertionError(f"{where}: invalid for Kubernetes {version} (strict) at `{path}`: {e.message}") from None


def strings_in(obj):
    """Every string inside obj (keys and values)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings_in(v)
    elif obj is not None:
        yield str(obj)


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def effective_security(pod_spec: dict, container: dict) -> dict:
    """A container's security settings, the container's winning over the pod's."""
    pod = pod_spec.get("securityContext") or {}
    own = container.get("securityContext") or {}
    keys = ("runAsNonRoot", "runAsUser", "seccompProfile")
    out = {k: pod[k] for k in keys if k in pod}
    out.update(own)
    return out


def rust_structs(source: str) -> dict[str, dict[str, str]]:
    """`pub struct Name { pub field: Type, ... }` of a Rust file -> {Name: {field: Type}}."""
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", source, re.S):
        fields = {}
        for f in re.finditer(r"^\s*pub (\w+):\s*([^\n]+?),?\s*$", m.group(2), re.M):
            fields[f.group(1)] = f.group(2)
        structs[m.group(1)] = fields
    return structs


RUST_STRUCTS = rust_structs((ROOT / "src" / "config.rs").read_text(encoding="utf-8"))


def rust_struct_of(type_text: str) -> str | None:
    """The config.rs struct a field's type names (through Option<...>), if any."""
    inner = re.fullmatch(r"Option<(\w+)>", type_text)
    name = inner.group(1) if inner else type_text
    return name if name in RUST_STRUCTS else None


def config_key_problems(config: dict, struct: str = "Settings", prefix: str = "") -> list[str]:
    """Keys of a keyscope config that src/config.rs does not have."""
    problems = []
    fields = RUST_STRUCTS[struct]
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(path)
            continue
        nested = rust_struct_of(fields[key])
        if nested and isinstance(value, dict):
            problems += config_key_problems(value, nested, path + ".")
    return problems


class Lint(unittest.TestCase):
    def lint(self, values):
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.27.0")
        errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        self.assertEqual(report.get("errors") or [], [], f"helm lint errors: {report}")
        self.assertEqual(errors, [], f"helm lint warnings/errors: {errors}")
        self.assertEqual(report.get("total_charts_linted"), 1, report)

    def test_lint_defaults(self):
        self.lint(None)

    def test_lint_all_on(self):
        self.lint(ALL_ON_VALUES)

    def test_lint_reports_problems(self):
        # The lint call is real: a bad value is reported.
        report = helm.lint(str(CHART), {"replicaCount": "two"}, strict=True, namespace=NAMESPACE)
        self.assertTrue(report.get("errors"), f"lint accepted replicaCount: two: {report}")


class Chart_(unittest.TestCase):
    def test_app_version_is_the_crate_version(self):
        cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
        package = re.search(r"^\[package\]\s*$(.*?)^\[", cargo, re.M | re.S)
        self.assertIsNotNone(package, "Cargo.toml: no [package] table")
        version = re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
        self.assertIsNotNone(version, "Cargo.toml: no package version")
        meta = chart().metadata
        self.assertEqual(meta.get("appVersion"), version.group(1), "Chart.yaml appVersion must equal the crate version in Cargo.toml")
        self.assertEqual(meta.get("apiVersion"), "v2")
        self.assertEqual(meta.get("version"), "0.1.0")
        self.assertEqual(meta.get("kubeVersion"), ">=1.27.0-0")

    def test_image_tag_defaults_to_app_version(self):
        self.assertEqual(keyscope_container()["image"], f"keyscope:{chart().metadata['appVersion']}")
        self.assertEqual(
            keyscope_container(ALL_ON_VALUES)["image"],
            "registry.example.com/platform/keyscope@" + ALL_ON_VALUES["image"]["digest"],
        )

    def test_every_value_is_documented(self):
        """Every leaf of values.yaml has a comment above it or above one of its parents."""
        stack: list[tuple[int, bool]] = []
        previous = ""
        undocumented = []
        lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
        keyed = []
        for n, line in enumerate(lines):
            m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
            if m and not line.lstrip().startswith("#"):
                keyed.append((n, len(m.group(1)), m.group(2), m.group(3).strip()))
        for i, (n, indent, key, rest) in enumerate(keyed):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            above = lines[n - 1].strip() if n > 0 else ""
            commented = above.startswith("#") or "#" in rest
            next_indent = keyed[i + 1][1] if i + 1 < len(keyed) else -1
            is_leaf = bool(rest) or next_indent <= indent
            if is_leaf and not commented and not any(c for _, c in stack):
                undocumented.append(f"line {n + 1}: {key}")
            stack.append((indent, commented))
            previous = line
        del previous
        self.assertEqual(undocumented, [], "values.yaml: values without a comment")

    def test_schema_and_values_match(self):
        """values.yaml passes the schema, and every schema property (outside free-form maps and
        config) has a default in values.yaml: the two document the same values."""
        jsonschema.validate(DEFAULT_VALUES, SCHEMA)
        missing = []

        def walk(schema, values, path):
            if schema.get("additionalProperties", True) is not False:
                return
            for key, sub in schema.get("properties", {}).items():
                where = f"{path}{key}"
                if where in ("global", "config"):
                    continue
                if not isinstance(values, dict) or key not in values:
                    missing.append(where)
                    continue
                if sub.get("type") == "object":
                    walk(sub, values[key], where + ".")

        walk(SCHEMA, DEFAULT_VALUES, "")
        self.assertEqual(missing, [], "values.schema.json properties without a default in values.yaml")

    def test_schema_closes_our_objects(self):
        self.assertEqual(SCHEMA.get("$schema"), "http://json-schema.org/draft-07/schema#")
        self.assertIs(SCHEMA.get("additionalProperties"), False, "top level must be closed")
        for key in ("image", "redis", "tls", "telemetry", "serviceAccount", "service", "probes", "autoscaling",
                    "podDisruptionBudget", "networkPolicy", "serviceMonitor", "existingSecretKeys", "config"):
            self.assertIs(SCHEMA["properties"][key].get("additionalProperties"), False, f"schema: {key} must be closed")

    def test_config_schema_matches_src_config(self):
        """The keyscope config keys the schema allows are exactly src/config.rs's (plus the
        pending TLS keys), section by section: a key added to keyscope shows up here."""
        problems = []

        def walk(schema, struct, path):
            props = set(schema.get("properties", {}))
            fields = set(RUST_STRUCTS[struct])
            for key in sorted(props - fields):
                problems.append(f"config.{path}{key}: in values.schema.json, not in src/config.rs {struct}")
            for key in sorted(fields - props):
                problems.append(f"config.{path}{key}: in src/config.rs {struct}, missing from values.schema.json (add it)")
            for key in sorted(props & fields):
                nested = rust_struct_of(RUST_STRUCTS[struct][key])
                sub = schema["properties"][key]
                if nested and sub.get("type") == "object":
                    walk(sub, nested, f"{path}{key}.")

        self.assertIn("Settings", RUST_STRUCTS, "src/config.rs: no Settings struct found")
        walk(SCHEMA["properties"]["config"], "Settings", "")
        self.assertEqual(problems, [])


class Render(unittest.TestCase):
    def test_every_combination_renders_and_validates(self):
        for name, values in COMBINATIONS.items():
            with self.subTest(combination=name):
                objs = objects(values)
                self.assertTrue(objs, f"{name}: nothing rendered")
                kinds = {o["kind"] for _, o in objs}
                for required in ("Deployment", "Service", "ConfigMap"):
                    self.assertIn(required, kinds, f"{name}: no {required}")
                for path, obj in objs:
                    validate_object(f"{name}: {path} {obj['kind']}/{obj['metadata'].get('name')}", obj)
                    self.assertEqual(obj["metadata"].get("namespace"), NAMESPACE, f"{name}: {path}: namespace")
                    labels = obj["metadata"].get("labels", {})
                    for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"):
                        self.assertIn(label, labels, f"{name}: {path} {obj['kind']}: label {label}")

    def test_validation_catches_a_bad_manifest(self):
        # The validator is real: a misspelt field fails in strict mode.
        dep = copy.deepcopy(keyscope_deployment())
        dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        with self.assertRaises(AssertionError):
            validate_object("mutated Deployment", dep)
        with self.assertRaises(AssertionError):
            validate_object("unknown kind", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
        sm = copy.deepcopy(only(ALL_ON_VALUES, "ServiceMonitor"))
        sm["spec"]["endpoints"][0]["intervall"] = "1s"
        with self.assertRaises(AssertionError):
            validate_object("mutated ServiceMonitor", sm)

    def test_all_on_renders_every_optional_part(self):
        kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for _, o in objects(ALL_ON_VALUES))
        self.assertEqual(
            kinds,
            sorted([
                "ConfigMap/keyscope-all-on",
                "Deployment/keyscope-all-on",
                "Deployment/keyscope-all-on-redis",
                "HorizontalPodAutoscaler/keyscope-all-on",
                "NetworkPolicy/keyscope-all-on",
                "NetworkPolicy/keyscope-all-on-redis",
                "PodDisruptionBudget/keyscope-all-on",
                "Secret/keyscope-all-on",
                "Service/keyscope-all-on",
                "Service/keyscope-all-on-redis",
                "ServiceAccount/keyscope-sa",
                "ServiceMonitor/keyscope-all-on",
            ]),
        )
        dep = keyscope_deployment(ALL_ON_VALUES)
        self.assertNotIn("replicas", dep["spec"], "with the HPA, the Deployment must leave replicas to it")
        self.assertEqual(keyscope_deployment()["spec"]["replicas"], 2)

    def test_defaults_render_the_core_only(self):
        kinds = sorted(o["kind"] for _, o in objects())
        self.assertEqual(kinds, sorted(["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]))


class Probes(unittest.TestCase):
    def test_grpc_probes_without_tls(self):
        c = keyscope_container()
        for probe in ("startupProbe", "readinessProbe"):
            self.assertIn(probe, c, f"Deployment: container keyscope has no {probe}")
            self.assertEqual(c[probe].get("grpc"), {"port": GRPC_PORT, "service": ""}, f"{probe} must be a native gRPC probe on {GRPC_PORT}, service \"\"")
            self.assertNotIn("httpGet", c[probe])
        # Liveness never follows Redis (gRPC health "" is NOT_SERVING while Redis is down):
        # keyscope's health service "liveness" is SERVING while the process serves.
        self.assertEqual(c["livenessProbe"].get("grpc"), {"port": GRPC_PORT, "service": "liveness"}, "liveness: native gRPC, service liveness")
        self.assertNotIn("httpGet", c["livenessProbe"])
        server_rs = (ROOT / "src" / "server.rs").read_text()
        self.assertIn('pub const LIVENESS: &str = "liveness";', server_rs, "src/server.rs must report health service `liveness`")

    def test_http_probes_with_tls(self):
        for values in (TLS_ON, ALL_ON_VALUES):
            c = keyscope_container(values)
            self.assertEqual(c["readinessProbe"].get("httpGet"), {"path": "/readyz", "port": "http"}, "readiness with TLS")
            self.assertEqual(c["livenessProbe"].get("httpGet"), {"path": "/livez", "port": "http"}, "liveness with TLS")
            self.assertEqual(c["startupProbe"].get("httpGet"), {"path": "/livez", "port": "http"}, "startup with TLS")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertNotIn("grpc", c[probe], f"{probe}: the kubelet cannot probe gRPC over TLS")

    def test_ports(self):
        c = keyscope_container()
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(ports, {"grpc": GRPC_PORT, "http": HTTP_PORT})
        config = rendered_config()
        self.assertEqual(config["server"]["grpc_addr"], f"0.0.0.0:{GRPC_PORT}")
        self.assertEqual(config["server"]["http_addr"], f"0.0.0.0:{HTTP_PORT}")
        self.assertEqual(c["args"], ["serve", "--config", CONFIG_PATH])
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        self.assertIn(CONFIG_PATH, mounts, "the config file is not mounted where --config points")
        self.assertEqual(mounts[CONFIG_PATH].get("subPath"), "config.yaml")

    def test_service_ports(self):
        for values in (None, ALL_ON_VALUES):
            svc = only(values, "Service", "" if values is None else "all-on")
            ports = {p["name"]: p for p in svc["spec"]["ports"]}
            self.assertEqual(set(ports), {"grpc", "http-metrics"}, "Service ports")
            self.assertEqual(ports["grpc"]["port"], GRPC_PORT)
            self.assertEqual(ports["grpc"]["appProtocol"], "grpc", "Service port grpc: appProtocol")
            self.assertEqual(ports["grpc"]["targetPort"], "grpc")
            self.assertEqual(ports["http-metrics"]["port"], HTTP_PORT)
            self.assertEqual(ports["http-metrics"]["appProtocol"], "http")
            self.assertEqual(svc["spec"]["type"], "ClusterIP")


class Shutdown(unittest.TestCase):
    def check(self, values):
        dep = keyscope_deployment(values)
        config = rendered_config(values)
        grace_ms = config["server"]["shutdown_grace_ms"]
        delay_ms = config["server"]["shutdown_delay_ms"]
        period = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(period, grace_ms / 1000, "terminationGracePeriodSeconds must exceed server.shutdown_grace_ms")
        self.assertLess(delay_ms, 0.8 * grace_ms, "server.shutdown_delay_ms must be < 80% of the grace period")
        return period, grace_ms, delay_ms

    def test_defaults(self):
        self.assertEqual(self.check(None), (30, 25000, 5000))

    def test_all_on(self):
        self.assertEqual(self.check(ALL_ON_VALUES), (50, 40000, 10000))

    def test_grace_rounds_up(self):
        values = {"config": {"server": {"shutdown_grace_ms": 25001, "shutdown_delay_ms": 0}}}
        self.assertEqual(self.check(values)[0], 31)

    def test_delay_at_80_percent_fails(self):
        err = render_error({"config": {"server": {"shutdown_grace_ms": 10000, "shutdown_delay_ms": 8000}}})
        self.assertIn("shutdown_delay_ms", err)
        self.assertIn("80%", err)
        self.check({"config": {"server": {"shutdown_grace_ms": 10000, "shutdown_delay_ms": 7999}}})


SECRET_VALUES = {
    "pepper": ALL_ON_VALUES["pepper"],
    "bootstrap token": ALL_ON_VALUES["bootstrapAdminToken"],
    "redis password": ALL_ON_VALUES["redis"]["password"],
}


class Secrets(unittest.TestCase):
    def test_secret_values_only_in_the_secret(self):
        rendered = render(ALL_ON_VALUES)
        secret = only(ALL_ON_VALUES, "Secret")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        self.assertEqual(
            data,
            {"pepper": SECRET_VALUES["pepper"], "bootstrap-admin-token": SECRET_VALUES["bootstrap token"], "redis-password": SECRET_VALUES["redis password"]},
            "the chart's Secret must hold exactly the given secrets",
        )
        for what, value in SECRET_VALUES.items():
            forms = {value, base64.b64encode(value.encode()).decode()}
            for path, text in rendered.items():
                if path.endswith("/secret.yaml"):
                    continue
                for form in forms:
                    self.assertNotIn(form, text, f"{path}: the {what} appears outside the Secret")
        for path, obj in objects(ALL_ON_VALUES):
            if obj["kind"] == "ConfigMap":
                for s in strings_in(obj):
                    for what, value in SECRET_VALUES.items():
                        self.assertNotIn(value, s, f"{path}: ConfigMap holds the {what}")

    def test_cluster_password_stays_out(self):
        pw = REDIS_TLS_CLUSTER["redis"]["password"]
        for path, text in render(REDIS_TLS_CLUSTER).items():
            if not path.endswith("/secret.yaml"):
                self.assertNotIn(pw, text, f"{path}: the Redis password appears outside the Secret")

    def test_env_from_secret_key_refs(self):
        c = keyscope_container(ALL_ON_VALUES)
        env = env_of(c)
        expected = {
            "KEYSCOPE__SECURITY__PEPPER": "pepper",
            "KEYSCOPE__BOOTSTRAP__ADMIN_TOKEN": "bootstrap-admin-token",
            "KEYSCOPE__STORE__REDIS__PASSWORD": "redis-password",
        }
        for name, key in expected.items():
            self.assertIn(name, env, f"container keyscope: no env {name}")
            self.assertNotIn("value", env[name], f"env {name} must not carry a value")
            ref = env[name].get("valueFrom", {}).get("secretKeyRef")
            self.assertEqual(ref, {"name": "keyscope-all-on", "key": key}, f"env {name}: secretKeyRef")
        for e in c["env"]:
            self.assertFalse(e["name"].startswith("KEYSCOPE__") and "value" in e, f"env {e['name']}: a literal KEYSCOPE__ value")

    def test_env_with_existing_secret(self):
        self.assertFalse([o for _, o in objects(EXISTING) if o["kind"] == "Secret"], "existingSecret: the chart must not create a Secret")
        env = env_of(keyscope_container(EXISTING))
        pepper = env["KEYSCOPE__SECURITY__PEPPER"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(pepper, {"name": "keyscope-secrets", "key": "pepper"}, "the pepper is required")
        token = env["KEYSCOPE__BOOTSTRAP__ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(token, {"name": "keyscope-secrets", "key": "bootstrap-admin-token", "optional": True})
        # all-on runs the evaluation Redis, which needs the password: not optional there.
        redis_pw = env["KEYSCOPE__STORE__REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(redis_pw, {"name": "keyscope-secrets", "key": "redis-password"})
        external = {"existingSecret": "keyscope-secrets"}
        redis_pw = env_of(keyscope_container(external))["KEYSCOPE__STORE__REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(redis_pw, {"name": "keyscope-secrets", "key": "redis-password", "optional": True})

    def test_defaults_have_no_optional_secrets(self):
        env = env_of(keyscope_container())
        self.assertIn("KEYSCOPE__SECURITY__PEPPER", env)
        self.assertNotIn("KEYSCOPE__BOOTSTRAP__ADMIN_TOKEN", env, "no token given: keyscope creates one")
        self.assertNotIn("KEYSCOPE__STORE__REDIS__PASSWORD", env, "no password given")

    def test_generated_pepper_is_kept(self):
        secret = only(None, "Secret")
        pepper = base64.b64decode(secret["data"]["pepper"]).decode()
        self.assertRegex(pepper, r"^[A-Za-z0-9]{48}$", "a generated pepper is 48 random letters and digits")
        self.assertEqual(secret["metadata"]["annotations"].get("helm.sh/resource-policy"), "keep")
        notes = render()[f"keyscope/templates/NOTES.txt"]
        self.assertIn("no pepper was given", notes)
        self.assertNotIn("no pepper was given", render(ALL_ON_VALUES)["keyscope/templates/NOTES.txt"])

    def test_evaluation_redis_password_from_the_secret(self):
        redis = only(ALL_ON_VALUES, "Deployment", "-redis")["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("$(REDIS_PASSWORD)", redis["args"], "--requirepass must take the password from the env var")
        ref = env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref, {"name": "keyscope-all-on", "key": "redis-password"})
        # Without a given password, one is generated into the Secret.
        generated = only({"redis": {"evaluation": {"enabled": True}}}, "Secret")
        self.assertRegex(base64.b64decode(generated["data"]["redis-password"]).decode(), r"^[A-Za-z0-9]{32}$")

    def test_secret_guards(self):
        cases = {
            "config.security.pepper": {"config": {"security": {"pepper": "0123456789abcdef0123"}}},
            "config.bootstrap.admin_token": {"config": {"bootstrap": {"admin_token": ALL_ON_VALUES["bootstrapAdminToken"]}}},
            "config.store.redis.password": {"config": {"store": {"redis": {"password": "hunter2"}}}},
            "config.store.redis.url": {"config": {"store": {"redis": {"url": "redis://:hunter2@redis:6379"}}}},
            "redis.url": {"redis": {"url": "redis://default:hunter2@redis-master.redis.svc:6379"}},
        }
        for key, values in cases.items():
            with self.subTest(key=key):
                err = render_error(values)
                self.assertIn(key, err, f"the failure must name {key}: {err}")
                self.assertIn("ConfigMap", err)
                self.assertNotIn("hunter2", err, "the failure must not echo the secret")
        # A user name without a password is fine (ACL user, password from the Secret).
        config = rendered_config({"redis": {"url": "redis://keyscope@redis-master.redis.svc:6379", "password": "pw-0123456789"}})
        self.assertEqual(config["store"]["redis"]["url"], "redis://keyscope@redis-master.redis.svc:6379")


class SecurityContexts(unittest.TestCase):
    def test_every_container_is_hardened(self):
        for name, values in COMBINATIONS.items():
            for path, obj in objects(values):
                if obj["kind"] != "Deployment":
                    continue
                pod = obj["spec"]["template"]["spec"]
                self.assertIs(pod.get("automountServiceAccountToken"), False, f"{name}: {path}: automountServiceAccountToken")
                for c in pod.get("initContainers", []) + pod["containers"]:
                    where = f"{name}: {path}: container {c['name']}"
                    sc = effective_security(pod, c)
                    self.assertIs(sc.get("runAsNonRoot"), True, f"{where}: runAsNonRoot")
                    self.assertNotEqual(sc.get("runAsUser", 0), 0, f"{where}: runAsUser must not be root")
                    self.assertIs(sc.get("readOnlyRootFilesystem"), True, f"{where}: readOnlyRootFilesystem")
                    self.assertIs(sc.get("allowPrivilegeEscalation"), False, f"{where}: allowPrivilegeEscalation")
                    self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], f"{where}: capabilities.drop")
                    self.assertFalse(sc.get("capabilities", {}).get("add"), f"{where}: capabilities.add")
                    self.assertEqual(sc.get("seccompProfile", {}).get("type"), "RuntimeDefault", f"{where}: seccompProfile")
                    self.assertFalse(sc.get("privileged"), f"{where}: privileged")

    def test_keyscope_pod_context(self):
        pod = keyscope_deployment()["spec"]["template"]["spec"]
        self.assertEqual(
            pod["securityContext"],
            {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        )

    def test_checksums_roll_the_pods(self):
        ann = keyscope_deployment()["spec"]["template"]["metadata"]["annotations"]
        for key in ("checksum/config", "checksum/secret"):
            self.assertRegex(ann.get(key, ""), r"^[0-9a-f]{64}$", f"pod annotation {key}")
        other = keyscope_deployment({"config": {"cache": {"ttl_ms": 1000, "negative_ttl_ms": 500}}})
        self.assertNotEqual(ann["checksum/config"], other["spec"]["template"]["metadata"]["annotations"]["checksum/config"], "a config change must change checksum/config")
        a = keyscope_deployment({"pepper": "PEPPER-one-0123456789abcdef"})["spec"]["template"]["metadata"]["annotations"]
        b = keyscope_deployment({"pepper": "PEPPER-two-0123456789abcdef"})["spec"]["template"]["metadata"]["annotations"]
        self.assertNotEqual(a["checksum/secret"], b["checksum/secret"], "a secret change must change checksum/secret")


class Config(unittest.TestCase):
    def test_defaults(self):
        config = rendered_config()
        self.assertEqual(config["store"], {"kind": "redis", "redis": {"url": "redis://redis-master.redis.svc:6379", "cluster": False}})
        self.assertEqual(config["log"], {"format": "json"})
        self.assertNotIn("tls", config["server"])
        self.assertNotIn("telemetry", config)
        self.assertEqual(config_key_problems(config), [])
        # Replicas stay in the Service during a Redis outage and answer from their caches.
        self.assertIs(config["server"]["ready_without_store"], True)

    def test_all_on(self):
        config = rendered_config(ALL_ON_VALUES)
        self.assertEqual(
            config["server"]["tls"],
            {"cert_file": "/etc/keyscope/tls/tls.crt", "key_file": "/etc/keyscope/tls/tls.key",
             "client_ca_file": "/etc/keyscope/tls/ca.crt", "client_auth": "required"},
        )
        redis = config["store"]["redis"]
        self.assertEqual(redis["url"], f"rediss://keyscope-all-on-redis.{NAMESPACE}.svc:6379")
        self.assertEqual(redis["tls"], {"ca_file": "/etc/keyscope/redis-tls/ca.crt", "cert_file": "/etc/keyscope/redis-tls/tls.crt", "key_file": "/etc/keyscope/redis-tls/tls.key"})
        self.assertEqual(redis["prefix"], "keyscope-test", "values.config is merged over the chart's keys")
        self.assertEqual(config["telemetry"]["otlp_endpoint"], "https://otel-collector.observability.svc:4317")
        self.assertEqual(config["telemetry"]["otlp_ca_file"], "/etc/keyscope/otlp-ca/ca.crt")
        self.assertEqual(config["telemetry"]["service_name"], "keyscope-test")
        self.assertEqual(config["ext_authz"]["routes"][1], {"prefix": "/api/billing", "module": "billing", "tenant": "acme"})
        self.assertEqual(config_key_problems(config), [])
        # Every file the config names is mounted.
        mounts = [m["mountPath"] for m in keyscope_container(ALL_ON_VALUES)["volumeMounts"]]
        for path in [config["server"]["tls"][k] for k in ("cert_file", "key_file", "client_ca_file")] + \
                    [redis["tls"][k] for k in ("ca_file", "cert_file", "key_file")] + [config["telemetry"]["otlp_ca_file"]]:
            self.assertTrue(any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is in the config but not mounted")

    def test_redis_cluster_over_tls(self):
        redis = rendered_config(REDIS_TLS_CLUSTER)["store"]["redis"]
        self.assertEqual(redis, {
            "url": REDIS_TLS_CLUSTER["redis"]["url"], "cluster": True, "username": "keyscope",
            "tls": {"ca_file": "/etc/keyscope/redis-tls/ca.crt"},
        })
        env = env_of(keyscope_container(REDIS_TLS_CLUSTER))
        self.assertEqual(env["KEYSCOPE__STORE__REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"], "redis-password")

    def test_tls_client_auth_none_needs_no_ca(self):
        config = rendered_config({"tls": {"enabled": True, "secretName": "x", "clientAuth": "none"}})
        self.assertEqual(set(config["server"]["tls"]), {"cert_file", "key_file", "client_auth"})

    def test_key_check_catches_typos(self):
        self.assertEqual(config_key_problems({"server": {"grpc_adr": "x"}, "cahce": {}}), ["server.grpc_adr", "cahce"])

    def test_memory_store(self):
        config = rendered_config(MEMORY)
        self.assertEqual(config["store"], {"kind": "memory"})
        env = env_of(keyscope_container(MEMORY))
        self.assertNotIn("KEYSCOPE__STORE__REDIS__PASSWORD", env)
        self.assertEqual(keyscope_deployment(MEMORY)["spec"]["replicas"], 1)

    def test_memory_store_needs_one_replica(self):
        for values in (
            {"config": {"store": {"kind": "memory"}}},
            {"replicaCount": 3, "config": {"store": {"kind": "memory"}}},
            merge(MEMORY, {"autoscaling": {"enabled": True}}),
        ):
            err = render_error(values)
            self.assertIn("replicaCount=1", err)

    def test_configuration_failures(self):
        cases = [
            ({"tls": {"enabled": True}}, "tls.secretName"),
            ({"redis": {"tls": {"enabled": True, "secretName": "ca"}}}, "rediss://"),
            ({"redis": {"tls": {"enabled": True}, "url": "rediss://r:6379"}}, "redis.tls.secretName"),
            ({"telemetry": {"caSecretName": "ca"}}, "telemetry.otlpEndpoint"),
            ({"telemetry": {"otlpEndpoint": "http://c:4317", "caSecretName": "ca"}}, "https://"),
            ({"pepper": "short"}, "pepper"),
            ({"bootstrapAdminToken": "ks_not-a-token_TOKENSECRET"}, "bootstrapAdminToken"),
            ({"redis": {"url": "http://:REDISSECRET@redis:6379"}}, "redis.url"),
            ({"redis": {"url": "redis://r:6379, tcp://REDISSECRET@r2"}}, "entry 1"),
            ({"config": {"store": {"redis": {"url": "http://REDISSECRET@r:6379"}}}}, "config.store.redis.url"),
            ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}, "minReplicas"),
        ]
        for values, expected in cases:
            with self.subTest(values=values):
                err = render_error(values)
                self.assertIn(expected, err)
                for secret in ("short", "TOKENSECRET", "REDISSECRET"):
                    self.assertNotIn(secret, err, "a failure must not echo a secret")


class TokenFormat(unittest.TestCase):
    def test_chart_token_check_matches_src(self):
        """The chart's bootstrapAdminToken check has the lengths of src/domain (key id, secret,
        checksum), so a token from `keyscope token new` is accepted."""
        ids = (ROOT / "src" / "domain" / "ids.rs").read_text(encoding="utf-8")
        token = (ROOT / "src" / "domain" / "token.rs").read_text(encoding="utf-8")
        id_len = int(re.search(r"impl KeyId \{.*?pub const LEN: usize = (\d+);", ids, re.S).group(1))
        tail = sum(int(re.search(rf"pub const {c}: usize = (\d+);", token).group(1)) for c in ("SECRET_LEN", "CHECKSUM_LEN"))
        helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
        self.assertIn(f"^[a-z0-9]{{1,16}}_[A-Za-z0-9]{{{id_len}}}_[A-Za-z0-9]{{{tail}}}$", helpers)
        good = "ks_" + "A" * id_len + "_" + "b" * tail
        render({"bootstrapAdminToken": good})
        self.assertIn("bootstrapAdminToken", render_error({"bootstrapAdminToken": good + "x"}))


class Schema(unittest.TestCase):
    def test_typos_and_bad_types_fail(self):
        cases = [
            ({"replicas": 3}, "replicas"),
            ({"image": {"tags": "1.0"}}, "tags"),
            ({"redis": {"evaluation": {"enable": True}}}, "enable"),
            ({"config": {"cahce": {"ttl_ms": 1}}}, "cahce"),
            ({"config": {"store": {"redis": {"prefx": "x"}}}}, "prefx"),
            ({"replicaCount": "two"}, "replicaCount"),
            ({"replicaCount": 0}, "replicaCount"),
            ({"tls": {"clientAuth": "sometimes"}}, "clientAuth"),
            ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
            ({"config": {"log": {"format": "xml"}}}, "format"),
            ({"config": {"store": {"kind": "postgres"}}}, "kind"),
            ({"config": {"server": {"shutdown_grace_ms": 0}}}, "shutdown_grace_ms"),
            ({"networkPolicy": {"redisPorts": [70000]}}, "redisPorts"),
        ]
        for values, expected in cases:
            with self.subTest(values=values):
                err = render_error(values)
                self.assertIn(expected, err, f"the schema error must name `{expected}`: {err}")

    def test_valid_values_pass(self):
        chart().validate_schema(ALL_ON_VALUES)
        chart().validate_schema({"podDisruptionBudget": {"maxUnavailable": "25%"}})


class NetworkPolicies(unittest.TestCase):
    def test_all_on(self):
        np = only(ALL_ON_VALUES, "NetworkPolicy", "all-on")
        ingress_ports = [[p["port"] for p in rule["ports"]] for rule in np["spec"]["ingress"]]
        self.assertEqual(ingress_ports, [["grpc"], ["http"]])
        self.assertEqual(np["spec"]["ingress"][0]["from"], ALL_ON_VALUES["networkPolicy"]["grpcFrom"])
        egress_ports = [sorted(str(p["port"]) for p in rule["ports"]) for rule in np["spec"]["egress"]]
        self.assertIn(["53", "53"], egress_ports, "DNS egress")
        self.assertIn(["6379"], egress_ports, "evaluation Redis egress")
        self.assertIn(["4317"], egress_ports, "OTLP collector egress (port from the endpoint)")
        self.assertIn(["443"], egress_ports, "extraEgress")
        redis_np = only(ALL_ON_VALUES, "NetworkPolicy", "-redis")
        self.assertEqual(redis_np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "server")

    def test_redis_ports_from_the_url(self):
        np = only(REDIS_TLS_CLUSTER, "NetworkPolicy")
        ports = [sorted(p["port"] for p in rule["ports"]) for rule in np["spec"]["egress"]]
        self.assertIn([6380, 6381], ports, "Redis egress ports come from redis.url")
        self.assertEqual(np["spec"]["ingress"][0]["from"], [{"podSelector": {}}], "default gRPC peers: the release's namespace")


class EvaluationRedis(unittest.TestCase):
    def test_labelled_for_evaluation(self):
        values = {"redis": {"evaluation": {"enabled": True}}}
        for kind in ("Deployment", "Service"):
            obj = only(values, kind, "-redis")
            self.assertEqual(obj["metadata"]["labels"].get("keyscope/evaluation-only"), "true", f"{kind}: evaluation label")
            self.assertIn("EVALUATION ONLY", obj["metadata"]["annotations"].get("keyscope/warning", ""), f"{kind}: warning annotation")
        dep = only(values, "Deployment", "-redis")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["image"], "redis:7.4-alpine")
        self.assertIn("--save", c["args"])
        self.assertEqual(c["args"][c["args"].index("--save") + 1], "", "no RDB snapshots")
        self.assertEqual(c["args"][c["args"].index("--appendonly") + 1], "no", "no AOF")
        self.assertEqual(c["args"][c["args"].index("--maxmemory-policy") + 1], "noeviction", "never evicts keyscope's records")
        self.assertNotIn("persistentVolumeClaim", json.dumps(dep))
        self.assertIn("EVALUATION ONLY", render(values)["keyscope/templates/NOTES.txt"])
        self.assertNotIn("EVALUATION ONLY", render()["keyscope/templates/NOTES.txt"])
        self.assertEqual(rendered_config(values)["store"]["redis"]["url"], f"redis://ks-keyscope-redis.{NAMESPACE}.svc:6379")

    def test_evaluation_redis_over_tls(self):
        c = only(ALL_ON_VALUES, "Deployment", "-redis")["spec"]["template"]["spec"]["containers"][0]
        args = c["args"]
        self.assertEqual(args[args.index("--port") + 1], "0", "no plaintext port with TLS")
        self.assertEqual(args[args.index("--tls-port") + 1], "6379")
        self.assertEqual(args[args.index("--tls-auth-clients") + 1], "yes")


class Templates(unittest.TestCase):
    def test_topology_spread(self):
        tsc = keyscope_deployment()["spec"]["template"]["spec"]["topologySpreadConstraints"]
        self.assertEqual([c["topologyKey"] for c in tsc], ["topology.kubernetes.io/zone", "kubernetes.io/hostname"])
        for c in tsc:
            self.assertEqual(c["whenUnsatisfiable"], "ScheduleAnyway")
            self.assertEqual(c["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"], RELEASE)
        own = keyscope_deployment(ALL_ON_VALUES)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        self.assertEqual(len(own), 1)
        self.assertEqual(own[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"], "server", "a constraint without labelSelector gets the pod's")

    def test_all_on_pod_settings(self):
        pod = keyscope_deployment(ALL_ON_VALUES)["spec"]["template"]
        spec = pod["spec"]
        self.assertEqual(spec["priorityClassName"], "platform-critical")
        self.assertEqual(spec["nodeSelector"], {"kubernetes.io/os": "linux"})
        self.assertEqual(spec["tolerations"][0]["key"], "dedicated")
        self.assertIn("nodeAffinity", spec["affinity"])
        self.assertEqual(spec["imagePullSecrets"], [{"name": "regcred"}])
        self.assertEqual(spec["serviceAccountName"], "keyscope-sa")
        self.assertEqual(pod["metadata"]["labels"]["team"], "platform")
        self.assertEqual(pod["metadata"]["annotations"]["example.com/team"], "platform")
        c = keyscope_container(ALL_ON_VALUES)
        self.assertEqual(env_of(c)["OTEL_RESOURCE_ATTRIBUTES"]["value"], "deployment.environment=test")
        self.assertEqual(env_of(c)["RUST_LOG"]["value"], "keyscope=debug,info")
        self.assertIn("/var/run/extra", [m["mountPath"] for m in c["volumeMounts"]])
        self.assertIn("extra", [v["name"] for v in spec["volumes"]])
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        self.assertEqual(secrets, {"tls": "keyscope-grpc-tls", "redis-tls": "keyscope-redis-tls", "otlp-ca": "otel-collector-ca"})
        tls_mount = [m for m in c["volumeMounts"] if m["name"] == "tls"][0]
        self.assertNotIn("subPath", tls_mount, "the TLS Secret must be mounted whole, so renewals reach keyscope")

    def test_pdb(self):
        self.assertEqual(only(None, "PodDisruptionBudget")["spec"], {"maxUnavailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "keyscope", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "server"}}})
        self.assertEqual(only(ALL_ON_VALUES, "PodDisruptionBudget")["spec"]["minAvailable"], 2)

    def test_hpa(self):
        hpa = only(ALL_ON_VALUES, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], "keyscope-all-on")
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60)

    def test_service_monitor(self):
        sm = only(ALL_ON_VALUES, "ServiceMonitor")
        ep = sm["spec"]["endpoints"][0]
        self.assertEqual((ep["port"], ep["path"], ep["interval"]), ("http-metrics", "/metrics", "15s"))
        self.assertEqual(sm["metadata"]["labels"]["release"], "prometheus")
        svc = only(ALL_ON_VALUES, "Service", "all-on")
        for k, v in sm["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(svc["metadata"]["labels"].get(k), v, f"ServiceMonitor selector {k} does not select the Service")
        self.assertIn("http-metrics", [p["name"] for p in svc["spec"]["ports"]])

    def test_notes(self):
        notes = render()["keyscope/templates/NOTES.txt"]
        self.assertIn(f"ks-keyscope.{NAMESPACE}.svc:50051", notes)
        self.assertIn("port-forward", notes)
        self.assertIn("grpcurl -plaintext", notes)
        self.assertIn("created the bootstrap admin key", notes)
        tls_notes = render(ALL_ON_VALUES)["keyscope/templates/NOTES.txt"]
        self.assertIn("-cacert", tls_notes)
        self.assertNotIn("-plaintext", tls_notes)


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        self.ignore = [
            line.strip()
            for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]

    def instructions(self):
        joined = re.sub(r"\\\n", " ", self.text)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                word, _, rest = line.partition(" ")
                yield word.upper(), rest.strip()

    def ignored(self, path: str) -> bool:
        """Whether .dockerignore keeps `path` (relative to the root) out of the build context:
        the last matching pattern wins, `!` re-includes, a pattern matches a path or a parent."""
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for pattern in self.ignore:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.strip("/")
            regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            if any(re.fullmatch(regex, c) for c in candidates):
                excluded = not negate
        return excluded

    def files_under(self, rel: str) -> list[str]:
        p = ROOT / rel
        if p.is_file():
            return [rel]
        return [str(f.relative_to(ROOT)) for f in p.rglob("*") if f.is_file()]

    def test_final_stage(self):
        stages = []
        for word, rest in self.instructions():
            if word == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((word, rest))
        self.assertGreaterEqual(len(stages), 2, "the Dockerfile must be multi-stage")
        final = stages[-1]
        users = [rest for word, rest in final if word == "USER"]
        self.assertTrue(users, "final stage: no USER")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0", ""), "final stage: USER must not be root")
        entry = [rest for word, rest in final if word == "ENTRYPOINT"]
        self.assertTrue(entry, "final stage: no ENTRYPOINT")
        self.assertEqual(json.loads(entry[-1]), ["/usr/local/bin/keyscope"])
        self.assertEqual(json.loads([r for w, r in final if w == "CMD"][-1]), ["serve"])
        self.assertIn("KEYSCOPE__SERVER__GRPC_ADDR=0.0.0.0:50051", self.text)
        self.assertIn("KEYSCOPE__SERVER__HTTP_ADDR=0.0.0.0:9464", self.text)
        self.assertRegex(self.text, r"cargo build --release --locked --bin keyscope")
        self.assertIn("rust:1.95-slim-bookworm", self.text)
        self.assertIn("gcr.io/distroless/cc-debian12:nonroot", self.text)

    def test_copied_paths_exist_and_are_in_the_context(self):
        copies = []
        for word, rest in self.instructions():
            if word in ("COPY", "ADD"):
                args = [a for a in rest.split() if not a.startswith("--")]
                if any(a.startswith("--from") for a in rest.split()):
                    continue
                copies += args[:-1]
        self.assertTrue(copies, "no COPY from the build context")
        for src in copies:
            self.assertTrue((ROOT / src).exists(), f"Dockerfile COPY {src}: no such path in the repository")
            files = self.files_under(src)
            self.assertTrue(files, f"COPY {src}: empty")
            kept = [f for f in files if not self.ignored(f)]
            self.assertTrue(kept, f"COPY {src}: everything is excluded by .dockerignore")
            if (ROOT / src).is_file():
                self.assertFalse(self.ignored(src), f"COPY {src}: excluded by .dockerignore")
        # What cargo needs to read the manifest and build: all copied and kept.
        cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
        needed = {"Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs", "src/lib.rs"}
        needed |= set(re.findall(r'^path\s*=\s*"([^"]+)"', cargo, re.M))
        for bench in re.findall(r'\[\[bench\]\]\s*\nname\s*=\s*"([^"]+)"(?:\s*\npath\s*=\s*"([^"]+)")?', cargo):
            needed.add(bench[1] or f"benches/{bench[0]}.rs")
        needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto")}
        for path in sorted(needed):
            self.assertTrue((ROOT / path).is_file(), f"cargo needs {path}, which does not exist")
            self.assertFalse(self.ignored(path), f"cargo needs {path}, excluded by .dockerignore")
            self.assertTrue(any(path == c or path.startswith(c.rstrip("/") + "/") for c in copies), f"cargo needs {path}, not COPY'd")

    def test_ignore_matcher(self):
        self.assertTrue(self.ignored("target/release/keyscope"))
        self.assertTrue(self.ignored(".git/HEAD"))
        self.assertFalse(self.ignored("src/main.rs"))
        self.assertFalse(self.ignored("bench/load.rs"))


class Guide(unittest.TestCase):
    """docs/deploy.md names only values that exist, and its values snippets render."""

    def setUp(self):
        self.text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
        self.blocks = re.findall(r"^```(\w*)\n(.*?)^```", self.text, re.M | re.S)

    def known(self, path: list[str]) -> bool:
        """Whether a values path exists: in values.yaml, or below a free-form map, or (under
        config) in the schema's keyscope config."""
        schema, values = SCHEMA, DEFAULT_VALUES
        for i, key in enumerate(path):
            props = schema.get("properties", {})
            if path[0] == "config":
                if schema.get("type") == "object" and "properties" not in schema:
                    return True
                if key not in props:
                    return schema.get("additionalProperties", True) is not False and "properties" not in schema
                schema = props[key]
                continue
            if isinstance(values, dict) and key in values:
                values = values[key]
                schema = props.get(key, {})
                if schema.get("type") == "object" and "properties" not in schema:
                    return True  # a free-form map (annotations, resources...)
                continue
            return False
        return True

    def value_paths(self, obj, prefix=()):
        if isinstance(obj, dict) and obj:
            for k, v in obj.items():
                yield from self.value_paths(v, prefix + (str(k),))
        else:
            yield list(prefix)

    def keyscope_helm_commands(self):
        """helm install/upgrade/template commands of the keyscope chart in the fenced blocks,
        backslash continuations joined (other charts' commands, e.g. Redis's, are skipped)."""
        for _, body in self.blocks:
            for command in re.sub(r"\\\n", " ", body).splitlines():
                if re.search(r"\bhelm (install|upgrade|template)\b", command) and "helm/keyscope" in command:
                    yield command

    def test_set_flags_name_existing_values(self):
        found = 0
        for command in self.keyscope_helm_commands():
            for m in re.finditer(r"--set(?:-string|-file|-json)?[ =]([A-Za-z][\w.\[\]-]*?)=", command):
                found += 1
                path = re.sub(r"\[\d+\]", "", m.group(1)).split(".")
                self.assertTrue(self.known(path), f"docs/deploy.md: --set {m.group(1)}: no such value in values.yaml")
        self.assertGreater(found, 5, "docs/deploy.md: expected --set examples on keyscope's chart")

    def test_helm_commands_render(self):
        """Each keyscope helm command in the guide, with its -f files (the guide's snippets of that
        name) and --set flags parsed by Helm's own parser, renders."""
        import shlex

        files = {m.group(1): yaml.safe_load(body) for lang, body in self.blocks
                 if lang == "yaml" and (m := re.match(r"# ([\w.-]+\.yaml)\n", body))}
        commands = list(self.keyscope_helm_commands())
        self.assertGreaterEqual(len(commands), 5, "docs/deploy.md: expected helm commands for keyscope's chart")
        for command in commands:
            words = shlex.split(command)
            values: dict = {}
            i = 0
            while i < len(words):
                word, arg = words[i], words[i + 1] if i + 1 < len(words) else ""
                if word in ("-f", "--values"):
                    self.assertIn(arg, files, f"docs/deploy.md: `{command}` names {arg}, which the guide does not show")
                    values = merge(values, files[arg])
                elif word in ("--set", "--set-json"):
                    parse = helm.parse_set_string if word == "--set" else helm.parse_set_json
                    try:
                        values = merge(values, parse(arg))
                    except helm.HelmError as e:
                        self.fail(f"docs/deploy.md: `{word} {arg}`: Helm cannot parse it: {e}")
                elif word.startswith("--set"):
                    self.fail(f"docs/deploy.md: `{word}` is not handled by this test")
                i += 1
            try:
                render(values)
            except helm.HelmError as e:
                self.fail(f"docs/deploy.md: `{command}` does not render: {e}")

    def test_values_snippets_exist_and_render(self):
        snippets = [body for lang, body in self.blocks if lang == "yaml" and re.match(r"#.*values.*\.yaml", body)]
        self.assertGreaterEqual(len(snippets), 3, "docs/deploy.md: expected values snippets (```yaml starting with `# ...values...yaml`)")
        for body in snippets:
            values = yaml.safe_load(body)
            for path in self.value_paths(values):
                self.assertTrue(self.known(path), f"docs/deploy.md: values key {'.'.join(path)} does not exist in values.yaml")
            try:
                render(values)
            except helm.HelmError as e:
                self.fail(f"docs/deploy.md: a values snippet does not render: {e}\n{body}")

    def test_inline_values_exist(self):
        """Values named in the guide's prose (`redis.url`, `config.cache.ttl_ms`...) exist too."""
        found = 0
        for token in re.findall(r"`([a-z][A-Za-z]*(?:\.[A-Za-z_]\w*)+)`", self.text):
            if token.split(".")[0] not in DEFAULT_VALUES or re.search(r"\.(crt|key|yaml|json|md|rs|rdb|txt)$", token):
                continue
            found += 1
            self.assertTrue(self.known(token.split(".")), f"docs/deploy.md names `{token}`, which is not a value of the chart")
        self.assertGreater(found, 10, "docs/deploy.md: expected values named in the text")

    def test_known_rejects_unknown(self):
        self.assertFalse(self.known(["redis", "passwd"]))
        self.assertFalse(self.known(["config", "cache", "ttl"]))
        self.assertTrue(self.known(["config", "cache", "ttl_ms"]))
        self.assertTrue(self.known(["podAnnotations", "x"]))

    def test_metrics_named_exist(self):
        """Every keyscope_* metric the guide names is registered in src/telemetry/metrics.rs
        (registry prefix `keyscope`, counters get `_total`, histograms `_seconds_bucket`...)."""
        metrics_src = (ROOT / "src" / "telemetry" / "metrics.rs").read_text(encoding="utf-8")
        self.assertIn('Registry::with_prefix("keyscope")', metrics_src)
        monitoring = self.text.split("## 10. What to monitor", 1)
        self.assertEqual(len(monitoring), 2, "docs/deploy.md: no section `## 10. What to monitor`")
        names = set(re.findall(r"\b(keyscope_[a-z_]+)", monitoring[1]))
        self.assertGreater(len(names), 8, "docs/deploy.md: expected the metrics to monitor")
        for name in sorted(names):
            base = re.sub(r"^keyscope_", "", name)
            base = re.sub(r"_(bucket|count|sum|total|info)$", "", base)
            base = re.sub(r"_seconds$", "", base)
            self.assertTrue(f'"{base}"' in metrics_src, f"docs/deploy.md names metric {name}, which src/telemetry/metrics.rs does not register (as \"{base}\")")

    def test_cli_commands_exist(self):
        """The keyscope commands and flags in the guide's code blocks exist in src/cli/args.rs."""
        args = (ROOT / "src" / "cli" / "args.rs").read_text(encoding="utf-8")
        enums = {
            name: re.search(rf"pub enum {enum} \{{(.*?)\n\}}", args, re.S).group(1)
            for name, enum in (("", "Command"), ("key", "KeyCommand"), ("scope", "ScopeCommand"), ("token", "TokenCommand"))
        }
        # Field names (clap's long flags, `_` as `-`) and explicit `long = "..."` names.
        flags = set(re.findall(r"^\s*(?:pub )?([a-z_]+): ", args, re.M)) | set(re.findall(r'long = "([\w-]+)"', args))
        flags = {f.replace("_", "-") for f in flags}
        found = 0
        for lang, body in self.blocks:
            if lang != "sh":
                continue
            for line in re.sub(r"\\\n", " ", body).splitlines():
                # A keyscope command line: `keyscope ...`, maybe after VAR=value assignments.
                m = re.match(r"^\s*(?:[A-Z_]+=\S+\s+)*keyscope\s+(.*)$", line)
                if not m:
                    continue
                call = m.group(1)
                words = [w for w in re.findall(r"(?<![=\w-])([a-z][a-z-]*)(?=\s|$)", re.sub(r"--[\w-]+(?:[ =](?!-)\S+)?", " ", call))]
                self.assertTrue(words, f"docs/deploy.md: no command in `{line.strip()}`")
                top = words[0]
                self.assertTrue(re.search(rf"\n    {top.capitalize()}\b", enums[""]), f"docs/deploy.md: `keyscope {top}` is not a CLI command")
                if top in ("key", "scope", "token"):
                    self.assertGreater(len(words), 1, f"docs/deploy.md: `keyscope {top}` without a subcommand")
                    self.assertTrue(re.search(rf"\n    {words[1].capitalize()}\b", enums[top]), f"docs/deploy.md: `keyscope {top} {words[1]}` is not a CLI command")
                for flag in re.findall(r"(?<!\S)--([a-z][\w-]*)", call):
                    self.assertTrue(flag in flags, f"docs/deploy.md: `keyscope ... --{flag}` is not a flag in src/cli/args.rs")
                found += 1
        self.assertGreater(found, 4, "docs/deploy.md: expected keyscope CLI commands")

    def snippets(self, marker: str) -> list[tuple[str, str]]:
        """Fenced yaml blocks whose first line is `# <marker>: <what>`, as (what, body)."""
        out = []
        for lang, body in self.blocks:
            m = re.match(rf"# {marker}: (.*)\n", body)
            if lang == "yaml" and m:
                out.append((m.group(1), body))
        return out

    def test_envoy_snippets_are_valid_envoy_config(self):
        """The Envoy snippets parse as Envoy's own protos (PyPI xds-protos, as
        examples/envoy/check_bootstrap.py does)."""
        try:
            from google.protobuf import json_format
            import envoy.config.cluster.v3.cluster_pb2 as cluster_pb2
            import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 as hcm_pb2
            import envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2  # noqa: F401
            import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
            import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
        except ImportError as e:
            self.fail(f"Envoy's protos are needed to check docs/deploy.md ({e}): python3 -m pip install xds-protos")
        messages = {"Cluster": cluster_pb2.Cluster, "HttpFilter": hcm_pb2.HttpFilter}
        snippets = self.snippets("envoy")
        self.assertGreaterEqual(len(snippets), 3)
        for what, body in snippets:
            kind = what.split()[0]
            self.assertIn(kind, messages, f"docs/deploy.md: unknown Envoy snippet kind `{what}`")
            try:
                json_format.ParseDict(json.loads(json.dumps(yaml.safe_load(body))), messages[kind](), ignore_unknown_fields=False)
            except json_format.ParseError as e:
                self.fail(f"docs/deploy.md: Envoy snippet `{what}` is not a valid {kind}: {e}")
            text = yaml.safe_dump(yaml.safe_load(body))
            if kind == "Cluster":
                self.assertIn("http2_protocol_options", text, f"{what}: keyscope needs HTTP/2")
                self.assertIn("port_value: 50051", text)

    def test_kubernetes_snippets(self):
        snippets = self.snippets("kubernetes")
        self.assertGreaterEqual(len(snippets), 2)
        for what, body in snippets:
            obj = yaml.safe_load(body)
            if obj["apiVersion"] == "cert-manager.io/v1":
                self.assertEqual(obj["kind"], "Certificate", what)
                self.assertEqual(obj["spec"]["secretName"], "keyscope-grpc-tls", f"{what}: the Secret the TLS values name")
                self.assertIn("keyscope.auth.svc", obj["spec"]["dnsNames"])
            else:
                validate_object(f"docs/deploy.md: {what}", obj)
            if obj["kind"] == "Service":
                # The headless Service must select keyscope's pods as the chart labels them.
                labels = keyscope_deployment()["spec"]["template"]["metadata"]["labels"]
                for k, v in obj["spec"]["selector"].items():
                    self.assertEqual(labels.get(k), "ks" if v == "keyscope" and k.endswith("instance") else v, f"{what}: selector {k}")
        tls_values = [yaml.safe_load(b) for lang, b in self.blocks if lang == "yaml" and b.startswith("# keyscope-tls-values.yaml")]
        self.assertEqual(len(tls_values), 1)
        self.assertEqual(tls_values[0]["tls"]["secretName"], "keyscope-grpc-tls")

    def test_prometheus_rules(self):
        snippets = self.snippets("prometheus")
        self.assertEqual(len(snippets), 1)
        rules = yaml.safe_load(snippets[0][1])["groups"][0]["rules"]
        self.assertGreaterEqual(len(rules), 6)
        for rule in rules:
            self.assertEqual(set(rule) - {"alert", "expr", "for", "labels", "annotations"}, set(), rule.get("alert"))
            self.assertTrue(rule.get("alert") and rule.get("expr"), rule)
            self.assertEqual(rule["expr"].count("("), rule["expr"].count(")"), f"{rule['alert']}: unbalanced parentheses")


def keyscope_bin() -> Path:
    path = Path(os.environ.get("KEYSCOPE_BIN") or ROOT / "target" / "debug" / "keyscope")
    if not path.is_file():
        raise AssertionError(
            f"no keyscope binary at {path}: run the chart tests through `cargo test --test chart`, "
            "or `cargo build` first, or set KEYSCOPE_BIN"
        )
    return path


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A CA and a certificate it signs for localhost, as PEM files; by chart file name."""
    def openssl(*args: str) -> None:
        try:
            done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        except FileNotFoundError as missing:
            raise AssertionError("openssl is needed to make test certificates (apt-get install openssl)") from missing
        if done.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")

    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "tls.key", directory / "tls.csr", directory / "tls.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "1", "-subj", "/CN=chart test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost")
    # X.509 v3 (rustls takes no v1 certificate): copy the request's extensions.
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-copy_extensions", "copy", "-out", str(crt), "-days", "1")
    return {"ca.crt": ca_crt, "tls.crt": crt, "tls.key": key}


def run_check_config(values: dict | None, workdir: Path) -> subprocess.CompletedProcess:
    """`keyscope serve --check-config` on what the chart renders for `values`: the ConfigMap's
    config.yaml, with every path under /etc/keyscope/ moved into `workdir` (test certificates
    in place of the mounted Secrets' files), and the container's environment."""
    tls_files = make_tls_files(workdir)
    text = only(values, "ConfigMap")["data"]["config.yaml"]

    def local(match: re.Match) -> str:
        target = workdir / match.group(1).replace("/", "_")
        name = Path(match.group(1)).name
        if name not in tls_files:
            raise AssertionError(f"config.yaml names /etc/keyscope/{match.group(1)}, which the test cannot provide")
        target.write_bytes(tls_files[name].read_bytes())
        return str(target)

    text = re.sub(r"/etc/keyscope/([A-Za-z0-9._/-]+)", local, text)
    config = workdir / "config.yaml"
    config.write_text(text)
    container = keyscope_container(values)
    secret_objs = [o for _, o in objects(values) if o["kind"] == "Secret"]
    secret_data = {}
    for secret in secret_objs:
        for key, value in (secret.get("data") or {}).items():
            secret_data[(secret["metadata"]["name"], key)] = base64.b64decode(value).decode()
        for key, value in (secret.get("stringData") or {}).items():
            secret_data[(secret["metadata"]["name"], key)] = value
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSCOPE", "OTEL_"))}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            found = secret_data.get((ref["name"], ref["key"]))
            if found is None:
                if ref.get("optional"):
                    continue
                # An existingSecret: stand in a well-formed value.
                found = {"pepper": "existing-secret-pepper-0123456789", "redis-password": "pw"}.get(ref["key"])
            if found is None:
                raise AssertionError(f"{item['name']}: secret {ref} has no test value")
            env[item["name"]] = found
    args = container.get("args", [])
    if args[:1] != ["serve"] or "--config" not in args:
        raise AssertionError(f"keyscope container args {args}: expected serve --config FILE")
    return subprocess.run(
        [str(keyscope_bin()), "serve", "--check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )


class KeyscopeAcceptsTheConfig(unittest.TestCase):
    """keyscope itself accepts the configuration the chart renders."""

    def test_every_combination(self):
        for name, values in COMBINATIONS.items():
            with self.subTest(combination=name), tempfile.TemporaryDirectory() as workdir:
                done = run_check_config(values, Path(workdir))
                self.assertEqual(
                    (done.returncode, done.stdout.strip()), (0, "config: ok"),
                    f"{name}: keyscope refused the chart's config: {done.stderr.strip()}",
                )

    def test_a_bad_setting_is_refused(self):
        # The check is real: a value keyscope rejects fails it.
        values = merge(ALL_ON_VALUES, {"config": {"cache": {"ttl_ms": 1000, "negative_ttl_ms": 5000}}})
        with tempfile.TemporaryDirectory() as workdir:
            done = run_check_config(values, Path(workdir))
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("cache.negative_ttl_ms", done.stderr)


def main() -> int:
    started = time.monotonic()
    os.chdir(ROOT)
    module = sys.modules[__name__]
    loader = unittest.defaultTestLoader
    # Optional arguments name test classes or methods, e.g. `Probes` or `Secrets.test_secret_guards`.
    suite = loader.loadTestsFromNames(sys.argv[1:], module) if sys.argv[1:] else loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=1 if os.environ.get("CI") else 2).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"chart tests took {time.monotonic() - started:.1f} s")
    print(f"chart: {result.testsRun - failed} passed, {failed} failed")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
