"""Options operators expect on real clusters: host networking, extra env and volumes, existing
ServiceAccounts, whole-object security contexts. Each is rendered, and the schema and the
render's own checks refuse what would break the install."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from conftest import CHART_DIR, NAMESPACE, RELEASE, env_of, render

SA_ADMISSION = "platform-dedupe-webhook"
SA_PRUNER = "platform-dedupe-pruner"

# One set with every option of this file on; test_schema_and_kube validates it strictly and
# test_apiserver applies it to a real API server (KUBE_CASES "operator-options").
OPERATOR_OPTIONS: dict[str, Any] = {
    "admission": {
        "hostNetwork": True,
        "port": 9443,
        "metricsPort": 9091,
        "serviceAccount": {"create": False, "name": SA_ADMISSION},
        "extraEnv": [
            {"name": "RUST_BACKTRACE", "value": "1"},
            {"name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "url", "optional": True}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "extraVolumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    },
    "pruner": {
        "serviceAccount": {"create": False, "name": SA_PRUNER},
        "extraEnv": [{"name": "PGAPPNAME", "valueFrom": {"secretKeyRef": {"name": "pruner-extra", "key": "app"}}}],
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    },
    # The CA volume comes first, the extra ones after it.
    "database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}},
}


def admission_pod(out: Any) -> dict[str, Any]:
    return out.one("Deployment")["spec"]["template"]["spec"]


def pruner_pod(out: Any) -> dict[str, Any]:
    return out.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_host_network_uses_cluster_dns_and_the_configured_ports(chart: helm.Chart) -> None:
    assert "hostNetwork" not in admission_pod(render(chart))
    out = render(chart, {"admission": {"hostNetwork": True, "port": 9443, "metricsPort": 9091}})
    pod = admission_pod(out)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    container = pod["containers"][0]
    assert "--listen=0.0.0.0:9443" in container["args"] and "--metrics-listen=0.0.0.0:9091" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"https": 9443, "metrics": 9091}
    # The API server calls the Service's port, which targets the same port on the node.
    service = out.one("Service")
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "https"] == [9443]
    webhook = out.one("ValidatingWebhookConfiguration")["webhooks"][0]
    assert webhook["clientConfig"]["service"]["port"] == 9443
    # The pruner never needs the host's network.
    assert "hostNetwork" not in pruner_pod(out)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"admission": {"hostNetwork": True}}, "admission.port on the node itself, and 10250 is the kubelet's API port"),
        ({"admission": {"hostNetwork": True, "port": 9443, "metricsPort": 10256}}, "admission.metricsPort on the node itself, and 10256 is kube-proxy's health port"),
        ({"admission": {"hostNetwork": True, "port": 9443, "metricsPort": 9443}}, "must differ"),
    ],
    ids=["default-port-is-the-kubelets", "metrics-port-is-kube-proxys", "same-port-twice"],
)
def test_host_network_refuses_ports_the_node_already_uses(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_extra_env_follows_the_charts_own_in_order(chart: helm.Chart) -> None:
    out = render(chart, OPERATOR_OPTIONS)
    for pod, extra in ((admission_pod(out), OPERATOR_OPTIONS["admission"]["extraEnv"]), (pruner_pod(out), OPERATOR_OPTIONS["pruner"]["extraEnv"])):
        env = pod["containers"][0]["env"]
        env_of(pod["containers"][0])  # no duplicate names
        assert env[0]["name"] == "DATABASE_URL"
        assert env[-len(extra) :] == extra, "extraEnv comes last, as given (valueFrom kept whole)"
        chart_names = [e["name"] for e in env[: -len(extra)]]
        assert chart_names[1:] == sorted(chart_names[1:])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"admission": {"extraEnv": [{"name": "DATABASE_URL", "value": "postgres://x"}]}}, "admission.extraEnv: DATABASE_URL is already set by database.secretRef"),
        ({"admission": {"extraEnv": [{"name": "JANGAR_ORCHESTRATION_DEDUPE_CLAIM_SCOPE", "value": "cluster"}]}}, "admission.extraEnv: JANGAR_ORCHESTRATION_DEDUPE_CLAIM_SCOPE is already set by the chart"),
        ({"env": {"vars": {"TZ": "UTC"}}, "pruner": {"extraEnv": [{"name": "TZ", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}}, "pruner.extraEnv: TZ is already set by the chart"),
        ({"admission": {"extraEnv": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}, "admission.extraEnv: A is already set by an earlier admission.extraEnv entry"),
    ],
    ids=["database-url", "derived-variable", "shared-env-vars", "listed-twice"],
)
def test_extra_env_duplicating_a_name_fails_the_render(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_extra_volumes_and_mounts(chart: helm.Chart) -> None:
    out = render(chart, OPERATOR_OPTIONS)
    for pod, part in ((admission_pod(out), "admission"), (pruner_pod(out), "pruner")):
        volumes = [v["name"] for v in pod["volumes"]]
        mounts = [m["name"] for m in pod["containers"][0]["volumeMounts"]]
        assert volumes[-1] == "scratch" and "database-ca" in volumes, (part, volumes)
        assert mounts[-1] == "scratch" and "database-ca" in mounts, (part, mounts)
        assert pod["volumes"][-1] == OPERATOR_OPTIONS[part]["extraVolumes"][0]
    # The pruner with no CA and no extras renders no empty lists.
    plain = pruner_pod(render(chart))
    assert "volumes" not in plain and "volumeMounts" not in plain["containers"][0]
    only_extra = pruner_pod(render(chart, {"pruner": {"extraVolumes": [{"name": "x", "emptyDir": {}}], "extraVolumeMounts": [{"name": "x", "mountPath": "/x"}]}}))
    assert only_extra["volumes"] == [{"name": "x", "emptyDir": {}}]
    assert only_extra["containers"][0]["volumeMounts"] == [{"name": "x", "mountPath": "/x"}]


def test_existing_service_accounts_render_none_and_rbac_binds_them(chart: helm.Chart) -> None:
    default = render(chart)
    assert sorted(sa["metadata"]["name"] for sa in default.of_kind("ServiceAccount")) == [
        f"{RELEASE}-orchestration-dedupe-admission",
        f"{RELEASE}-orchestration-dedupe-pruner",
    ]
    out = render(chart, OPERATOR_OPTIONS)
    assert "ServiceAccount" not in out.kinds()
    assert admission_pod(out)["serviceAccountName"] == SA_ADMISSION
    assert pruner_pod(out)["serviceAccountName"] == SA_PRUNER
    binding = out.one("ClusterRoleBinding")
    assert [s["name"] for s in binding["subjects"]] == [SA_ADMISSION]
    scoped = render(chart, {"admission": {"namespaces": ["agents", "ci"], "serviceAccount": {"create": False, "name": SA_ADMISSION}}})
    assert {s["name"] for b in scoped.of_kind("RoleBinding") for s in b["subjects"]} == {SA_ADMISSION}
    # A chosen name for a created account: created under it, and bound.
    named = render(chart, {"admission": {"serviceAccount": {"name": "webhook", "annotations": {"a": "b"}}}})
    sa = named.one("ServiceAccount", "webhook")
    assert sa["metadata"]["annotations"] == {"a": "b"}
    assert admission_pod(named)["serviceAccountName"] == "webhook"
    assert [s["name"] for s in named.one("ClusterRoleBinding")["subjects"]] == ["webhook"]


def test_service_account_create_false_needs_a_name(chart: helm.Chart) -> None:
    for part in ("admission", "pruner"):
        with pytest.raises(helm.HelmValuesError, match=f"/{part}/serviceAccount"):
            render(chart, {part: {"serviceAccount": {"create": False}}})


def test_security_contexts_are_replaced_whole_not_merged(chart: helm.Chart) -> None:
    """OpenShift's restricted SCC refuses a fixed runAsUser: setting the object must drop it."""
    default = render(chart)
    for pod in (admission_pod(default), pruner_pod(default)):
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["containers"][0]["securityContext"]["runAsUser"] == 65532
    out = render(chart, OPERATOR_OPTIONS)
    for pod, part in ((admission_pod(out), "admission"), (pruner_pod(out), "pruner")):
        assert pod["securityContext"] == OPERATOR_OPTIONS[part]["podSecurityContext"], part
        assert pod["containers"][0]["securityContext"] == OPERATOR_OPTIONS[part]["securityContext"], part
        assert "runAsUser" not in pod["securityContext"] and "fsGroup" not in pod["securityContext"]


def test_schema_refuses_malformed_options(chart: helm.Chart) -> None:
    bad = {
        "/admission/hostNetwork": {"admission": {"hostNetwork": "true"}},
        "/admission/extraEnv": {"admission": {"extraEnv": {"A": "1"}}},
        "/admission/extraEnv/0": {"admission": {"extraEnv": [{"value": "no name"}]}},
        "/pruner/extraEnv/0": {"pruner": {"extraEnv": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}},
        "/admission/extraEnv/0/value": {"admission": {"extraEnv": [{"name": "A", "value": 1}]}},
        "/admission/extraEnv/0/valueFrom": {"admission": {"extraEnv": [{"name": "A", "valueFrom": {"secretRef": {"name": "s"}}}]}},
        "/admission/extraVolumes/0": {"admission": {"extraVolumes": [{"emptyDir": {}}]}},
        "/admission/extraVolumeMounts/0": {"admission": {"extraVolumeMounts": [{"name": "x"}]}},
        "/admission/podSecurityContext": {"admission": {"podSecurityContext": {"runAsUsr": 1000}}},
        "/pruner/securityContext": {"pruner": {"securityContext": {"readOnlyRootFS": True}}},
        "/pruner/serviceAccount/name": {"pruner": {"serviceAccount": {"name": "Not_A_Name"}}},
    }
    for where, values in bad.items():
        with pytest.raises(helm.HelmValuesError) as error:
            chart.validate_schema(chart.merge_values(values))
        assert where in str(error.value), (where, str(error.value))


def test_lint_strict_passes_with_every_option() -> None:
    report = helm.lint(CHART_DIR, OPERATOR_OPTIONS, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report
