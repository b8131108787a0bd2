"""Shared helpers for the offline chart tests.

The chart is rendered and linted by the Helm v4 Go SDK itself (helm-python-sdk, no helm
binary); objects are checked against the Kubernetes OpenAPI schemas (kubernetes-validate);
the flags and environment the chart passes are checked against the real binaries' --help.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "orchestration-dedupe"
RELEASE = "dedupe"
NAMESPACE = "jangar"
KUBE_VERSION = "1.33.0"

# Kinds from CRDs (cert-manager, prometheus-operator): kubernetes-validate has no schema for them.
CRD_KINDS = {"Issuer", "Certificate", "ServiceMonitor", "PrometheusRule"}


# --- rendering --------------------------------------------------------------------------


@dataclass
class Rendered:
    """One render of the chart: the manifests by template path and the parsed objects."""

    manifests: dict[str, str]
    objects: list[dict[str, Any]] = field(init=False)
    notes: str = field(init=False)

    def __post_init__(self) -> None:
        self.notes = ""
        self.objects = []
        for path in sorted(self.manifests):
            text = self.manifests[path]
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    @property
    def text(self) -> str:
        return "\n---\n".join(v for k, v in sorted(self.manifests.items()) if not k.endswith("NOTES.txt"))

    def kinds(self) -> Counter[str]:
        return Counter(o["kind"] for o in self.objects)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name_suffix is None or o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} (suffix {name_suffix}), got {[o['metadata']['name'] for o in found]}"
        return found[0]

    def pod_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(object name, pod spec) for every workload."""
        specs = []
        for o in self.of_kind("Deployment"):
            specs.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        for o in self.of_kind("CronJob"):
            specs.append((o["metadata"]["name"], o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        return specs


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    """Renders like `helm template` (no cluster: lookup finds nothing), values validated by the schema."""
    return Rendered(chart.render(values, name=name, namespace=namespace))


def deep_merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = value
    return out


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> env entry; fails on duplicate names (server-side apply rejects them)."""
    names = [e["name"] for e in container.get("env", [])]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    assert not dupes, f"duplicate env names in {container['name']}: {dupes}"
    return {e["name"]: e for e in container.get("env", [])}


# --- the binaries' command line ---------------------------------------------------------


@dataclass
class Option:
    flag: str
    env: str | None = None
    default: str | None = None
    possible: list[str] | None = None


@dataclass
class Cli:
    binary: str
    help_text: str
    options: dict[str, Option]

    def by_env(self) -> dict[str, Option]:
        return {o.env: o for o in self.options.values() if o.env}


_HEADER = re.compile(r"^\s{2,}(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)\b")


def parse_help(text: str) -> dict[str, Option]:
    """Parses clap's long --help: each option block, its [env: …], [default: …] and possible values."""
    options: dict[str, Option] = {}
    current: Option | None = None
    in_possible = False
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = Option(flag=header.group(1))
            options[current.flag] = current
            in_possible = False
            continue
        if current is None:
            continue
        if m := re.search(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)", line):
            current.env = m.group(1)
        if m := re.search(r"\[default: ([^\]]*)\]", line):
            current.default = m.group(1)
        if m := re.search(r"\[possible values: ([^\]]*)\]", line):
            current.possible = [v.strip() for v in m.group(1).split(",")]
        if line.strip() == "Possible values:":
            in_possible = True
            current.possible = []
            continue
        if in_possible:
            if m := re.match(r"^\s+- ([A-Za-z0-9_.-]+)(?::|$)", line):
                assert current.possible is not None
                current.possible.append(m.group(1))
                continue
            in_possible = False
    return options


def bin_dir() -> Path:
    configured = os.environ.get("DEDUPE_BIN_DIR")
    if configured:
        return Path(configured)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug"


def cli_for(binary: str) -> Cli:
    path = bin_dir() / binary
    if not path.is_file():
        pytest.fail(
            f"{path} not found: build it first (make chart-test does: cargo build -p dedupe-admission -p dedupe-pruner), "
            "or point DEDUPE_BIN_DIR at the directory holding it"
        )
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, check=True)
    options = parse_help(out.stdout)
    assert options, f"no options parsed from {binary} --help:\n{out.stdout}"
    return Cli(binary=binary, help_text=out.stdout, options=options)


@pytest.fixture(scope="session")
def clis() -> dict[str, Cli]:
    return {b: cli_for(b) for b in ("dedupe-admission", "dedupe-pruner")}


# --- a fake API server, so that `lookup` has something to find ----------------------------


class FakeApiServer:
    """Plain HTTP on loopback answering the two calls Helm's `lookup` makes for a Secret
    (discovery of /api/v1 and the GET), from a dict of secrets. Records every path."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, Any]]):
        self.secrets = secrets
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                body: dict[str, Any] | None = None
                if path == "/api":
                    body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
                elif path == "/apis":
                    body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
                elif path == "/api/v1":
                    body = {
                        "kind": "APIResourceList",
                        "groupVersion": "v1",
                        "resources": [
                            {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get", "list"]}
                        ],
                    }
                elif m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets/([^/]+)", path):
                    body = fake.secrets.get((m.group(1), m.group(2)))
                if body is None:
                    self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
                else:
                    self._send(200, body)

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeApiServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def kubeconfig(self) -> str:
        port = self.server.server_address[1]
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
                "current-context": "fake",
            }
        )

    def render(self, chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
        """Renders like `helm upgrade` does: lookup asks this server."""
        with helm.Config(kubeconfig_content=self.kubeconfig, namespace=NAMESPACE) as cfg:
            return Rendered(cfg.render(chart, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True))
