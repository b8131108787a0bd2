"""The rendered chart applied server-side to a real kube-apiserver: every object accepted.

The offline tests check the objects against schemas; a real API server also runs its own
validation (CEL in ValidatingAdmissionPolicies type-checked, webhook configurations, RBAC
escalation rules, CronJob schedules, Service ports, ...). Needs the control plane `with-kube`
starts (`make chart-test` wraps pytest in it when KUBEBUILDER_ASSETS is set); without
KUBEBUILDER_ASSETS these tests are skipped, with it they must run.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import render
from test_schema_and_kube import KUBE_CASES

STAND_IN_CRDS = Path(__file__).parent / "fixtures" / "stand-in-crds.yaml"


class ApiServer:
    """The admin's view of the control plane in DEDUPE_TEST_KUBE_DIR, over plain HTTPS."""

    def __init__(self, directory: Path) -> None:
        self.url = urllib.parse.urlparse((directory / "server").read_text().strip())
        self.context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        self.context.load_cert_chain(str(directory / "admin.crt"), str(directory / "admin.key"))
        self.resources: dict[tuple[str, str], tuple[str, bool]] = {}

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
        connection = http.client.HTTPSConnection(self.url.hostname, self.url.port, context=self.context, timeout=30)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"} | ({} if payload is None else {"Content-Type": content_type})
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read()
            return response.status, json.loads(text) if text else None
        finally:
            connection.close()

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from discovery (refreshed once when unknown)."""
        key = (api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        # A group added by a CRD a moment ago may be listed before its resources are.
        for _ in range(100):
            if key in self.resources:
                return self.resources[key]
            status, body = self.request("GET", base)
            for r in (body or {}).get("resources") or []:
                if "/" not in r["name"]:
                    self.resources[(api_version, r["kind"])] = (r["name"], r["namespaced"])
            if key not in self.resources:
                time.sleep(0.1)
        raise AssertionError(f"{kind} ({api_version}) not served: last discovery answer {status} {body}")

    def apply(self, obj: dict[str, Any], namespace: str) -> tuple[int, Any]:
        """Server-side apply, as `kubectl apply --server-side --force-conflicts` does."""
        api_version, kind, name = obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": obj["metadata"].get("namespace", namespace)}}
            base += f"/namespaces/{obj['metadata']['namespace']}"
        path = f"{base}/{plural}/{name}?fieldManager=chart-test&force=true"
        return self.request("PATCH", path, obj, "application/apply-patch+yaml")

    def wait_established(self, crd: str) -> None:
        for _ in range(300):
            status, body = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
            conditions = ((body or {}).get("status") or {}).get("conditions") or []
            if status == 200 and any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.1)
        raise AssertionError(f"{crd} not established")


@pytest.fixture(scope="module")
def apiserver() -> ApiServer:
    directory = os.environ.get("DEDUPE_TEST_KUBE_DIR")
    if not directory:
        if os.environ.get("KUBEBUILDER_ASSETS"):
            pytest.fail("KUBEBUILDER_ASSETS is set but DEDUPE_TEST_KUBE_DIR is not: run under with-kube (make chart-test)")
        pytest.skip("real-API-server chart test: KUBEBUILDER_ASSETS is not set")
    server = ApiServer(Path(directory))
    for crd in yaml.safe_load_all(STAND_IN_CRDS.read_text()):
        status, body = server.apply(crd, "")
        assert status in (200, 201), f"stand-in CRD {crd['metadata']['name']}: {status} {body}"
        server.wait_established(crd["metadata"]["name"])
    server.resources.clear()
    return server


@pytest.mark.parametrize("values", KUBE_CASES.values(), ids=KUBE_CASES.keys())
def test_every_rendered_object_is_accepted_by_a_real_api_server(chart: helm.Chart, apiserver: ApiServer, values: dict[str, Any]) -> None:
    # A release and namespace per case: cluster-scoped objects are named after the release.
    case = list(KUBE_CASES.values()).index(values)
    release, namespace = f"dedupe-{case}", f"chart-{case}"
    out = render(chart, values, name=release, namespace=namespace)
    # The release's namespace and those the chart puts Roles into (admission.namespaces).
    for name in {namespace} | {o["metadata"]["namespace"] for o in out.objects if "namespace" in o["metadata"]}:
        status, body = apiserver.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, "")
        assert status in (200, 201), body
    refused = []
    for obj in out.objects:
        status, body = apiserver.apply(obj, namespace)
        if status not in (200, 201):
            refused.append(f"{obj['kind']}/{obj['metadata']['name']}: {status} {body.get('message') if body else ''}")
    assert not refused, "\n".join(refused)
    assert out.objects
