"""values.schema.json rejects bad values; rendered core objects are valid Kubernetes 1.33."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from conftest import CRD_KINDS, KUBE_VERSION, render
from test_operator_options import OPERATOR_OPTIONS
from test_render import EVERYTHING_ON

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-failure-policy": ({"admission": {"failurePolicy": "Sometimes"}}, "/admission/failurePolicy"),
    "lowercase-failure-policy": ({"admission": {"failurePolicy": "fail"}}, "/admission/failurePolicy"),
    "non-string-schedule": ({"pruner": {"schedule": 17}}, "/pruner/schedule"),
    "non-boolean-admission-toggle": ({"admission": {"enabled": "true"}}, "/admission/enabled"),
    "non-boolean-pruner-toggle": ({"pruner": {"enabled": "yes"}}, "/pruner/enabled"),
    "unknown-top-level-key": ({"replicas": 3}, "replicas"),
    "misspelt-nested-key": ({"admission": {"replica": 3}}, "replica"),
    "unknown-tls-mode": ({"admission": {"tls": {"mode": "vault"}}}, "/admission/tls/mode"),
    "kube-lookup-as-yaml-boolean": ({"admission": {"kubeLookup": True}}, "/admission/kubeLookup"),
    "unknown-claim-scope": ({"claimScope": "global"}, "/claimScope"),
    "retention-zero": ({"retentionDays": 0}, "/retentionDays"),
    "timeout-above-30": ({"admission": {"timeoutSeconds": 31}}, "/admission/timeoutSeconds"),
    "database-url-in-env": ({"env": {"vars": {"DATABASE_URL": "postgres://x"}}}, "DATABASE_URL"),
    "non-string-env-value": ({"admission": {"env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE": 8}}}}, "/admission/env/vars"),
    "bad-env-name": ({"pruner": {"env": {"vars": {"1BAD": "x"}}}}, "1BAD"),
    "empty-secret-ref": ({"database": {"secretRef": {"name": ""}}}, "/database/secretRef/name"),
    "bad-namespace-name": ({"admission": {"namespaces": ["Agents"]}}, "/admission/namespaces"),
    "bad-duration": ({"admission": {"tls": {"certManager": {"duration": "90d"}}}}, "/admission/tls/certManager/duration"),
    "unknown-concurrency-policy": ({"pruner": {"concurrencyPolicy": "Never"}}, "/pruner/concurrencyPolicy"),
    "ca-bundle-not-base64": ({"admission": {"tls": {"mode": "secret", "secret": {"name": "t", "caBundle": "-----BEGIN CERTIFICATE-----"}}}}, "/admission/tls/secret/caBundle"),
    "ca-bundle-multi-line": ({"admission": {"tls": {"mode": "secret", "secret": {"name": "t", "caBundle": "Q0E=\nQ0E="}}}}, "/admission/tls/secret/caBundle"),
    "bad-pdb": ({"admission": {"pdb": {"maxUnavailable": "half"}}}, "/admission/pdb/maxUnavailable"),
    "non-string-database-ca-name": ({"database": {"tls": {"caSecretRef": {"name": 5}}}}, "/database/tls/caSecretRef/name"),
    "database-ca-name-as-yaml-boolean": ({"database": {"tls": {"caSecretRef": {"name": True}}}}, "/database/tls/caSecretRef/name"),
    "database-ca-name-not-a-secret-name": ({"database": {"tls": {"caSecretRef": {"name": "Jangar_CA"}}}}, "/database/tls/caSecretRef/name"),
    "empty-database-ca-key": ({"database": {"tls": {"caSecretRef": {"name": "jangar-ca", "key": ""}}}}, "/database/tls/caSecretRef/key"),
    "database-ca-key-with-a-slash": ({"database": {"tls": {"caSecretRef": {"name": "jangar-ca", "key": "certs/ca.crt"}}}}, "/database/tls/caSecretRef/key"),
    "sslmode-is-not-a-value": ({"database": {"tls": {"sslmode": "require"}}}, "sslmode"),
}


@pytest.mark.parametrize(("values", "where"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as schema_error:
        chart.validate_schema(chart.merge_values(values))
    assert where in str(schema_error.value)
    # And an install/template with them fails the same way, before anything renders.
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


GOOD_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": EVERYTHING_ON,
    "ignore-policy": {"admission": {"failurePolicy": "Ignore"}},
    "min-available-percent": {"admission": {"pdb": {"minAvailable": "50%"}}},
    "cron-macro": {"pruner": {"schedule": "@daily"}},
    "global-from-a-parent-chart": {"global": {"imageRegistry": "example"}},
    "existing-issuer": {"admission": {"tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}}},
    "database-ca": {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}},
    "operator-options": OPERATOR_OPTIONS,
    "database-ca-dotted-name-custom-key": {"database": {"tls": {"caSecretRef": {"name": "pg.server-ca", "key": "ca_bundle.pem"}}}},
}


@pytest.mark.parametrize("values", GOOD_VALUES.values(), ids=GOOD_VALUES.keys())
def test_schema_accepts_good_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(chart.merge_values(values))
    assert render(chart, values).objects


KUBE_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": EVERYTHING_ON,
    "tls-secret": {"admission": {"tls": {"mode": "secret", "secret": {"name": "webhook-tls", "caBundle": "Q0E="}}}},
    "tls-helm": {"admission": {"tls": {"mode": "helm"}}},
    "tls-self": {"admission": {"tls": {"mode": "self"}, "mutating": {"enabled": True}}},
    "database-ca": {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}},
    "database-ca-pruner-only": {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}, "admission": {"enabled": False}},
    # Roles per namespace, mTLS from a ConfigMap, NetworkPolicy peers and IPv6 blocks (test_access).
    "scoped-mtls-configmap": {
        "admission": {"namespaces": ["agents"], "reconcile": {"enabled": False}, "tls": {"clientCA": {"name": "ca", "kind": "ConfigMap"}}},
        "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["fd00:10::/64"]}, "webhookFrom": [{"podSelector": {"matchLabels": {"k8s-app": "konnectivity-agent"}}}]},
    },
    "network-policy-allow-all": {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True}, "serviceMonitor": {"enabled": True}},
    # Host network, extra env/volumes, existing ServiceAccounts, OpenShift-style security
    # contexts (test_operator_options).
    "operator-options": OPERATOR_OPTIONS,
    "tuned": {
        "admission": {"replicas": 3, "pdb": {"minAvailable": "50%"}, "preStopSleepSeconds": 0, "podAnnotations": {"a": "b"}, "podLabels": {"team": "x"}},
        "pruner": {"podFailurePolicy": {"rules": []}, "podLabels": {"team": "x"}},
        "commonLabels": {"team": "x"},
    },
}


@pytest.mark.parametrize("values", KUBE_CASES.values(), ids=KUBE_CASES.keys())
def test_core_objects_validate_for_kubernetes_1_33_strict(chart: helm.Chart, values: dict[str, Any]) -> None:
    out = render(chart, values)
    skipped = set()
    failures = []
    for obj in out.objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            skipped.add(obj["kind"])
        except ValidationError as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not failures, "\n".join(failures)
    # Only CRD kinds (cert-manager, prometheus-operator) may lack a schema.
    assert skipped <= CRD_KINDS, skipped


def test_crd_objects_have_the_fields_their_crds_require(chart: helm.Chart) -> None:
    """No schema ships for cert-manager or prometheus-operator objects; check the essentials."""
    out = render(chart, {"serviceMonitor": {"enabled": True}})
    for obj in out.objects:
        if obj["kind"] in ("Issuer", "Certificate"):
            assert obj["apiVersion"] == "cert-manager.io/v1"
        if obj["kind"] == "Certificate":
            assert obj["spec"]["secretName"] and obj["spec"]["issuerRef"]["name"]
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"] and obj["spec"]["selector"]["matchLabels"]
