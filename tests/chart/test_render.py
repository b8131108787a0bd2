"""Lint, determinism, toggles, and the shape of what the chart renders."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import helm_python as helm
import pytest

from conftest import CHART_DIR, NAMESPACE, RELEASE, env_of, render

# Value sets that turn on everything optional, used wherever "all templates" matter.
EVERYTHING_ON = {
    "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.16.0.0/28"]}},
    "serviceMonitor": {"enabled": True},
    "imagePullSecrets": [{"name": "regcred"}],
    "admission": {
        "priorityClassName": "system-cluster-critical",
        "namespaces": ["agents", "ci"],
        "tls": {"clientCA": {"name": "apiserver-client-ca"}},
        "mutating": {"enabled": True},
    },
    "pruner": {"priorityClassName": "low", "dryRun": True},
    "database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}},
}

LINT_CASES = {
    "defaults": {},
    "everything-on": EVERYTHING_ON,
    "tls-secret": {"admission": {"tls": {"mode": "secret", "secret": {"name": "webhook-tls", "caBundle": "Q0E="}}}},
    "tls-helm": {"admission": {"tls": {"mode": "helm"}}},
    "tls-self": {"admission": {"tls": {"mode": "self"}, "mutating": {"enabled": True}}},
    "webhook-only": {"pruner": {"enabled": False}},
    "pruner-only": {"admission": {"enabled": False}},
    "database-ca": {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}},
}


@pytest.mark.parametrize("values", LINT_CASES.values(), ids=LINT_CASES.keys())
def test_lint_strict_passes(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    # Severity 1 is informational ("icon is recommended"); strict lint fails on warnings (2) and errors (3).
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_default_render_is_deterministic(chart: helm.Chart) -> None:
    first = render(chart)
    second = render(chart)
    assert first.manifests == second.manifests
    assert first.objects, "the default values render nothing"


# helm mode is left out on purpose: without lookup it generates a new CA per render (test_tls).
@pytest.mark.parametrize("values", [v for k, v in LINT_CASES.items() if k != "tls-helm"], ids=[k for k in LINT_CASES if k != "tls-helm"])
def test_renders_are_deterministic_for_gitops(chart: helm.Chart, values: dict[str, Any]) -> None:
    """Argo CD renders on every refresh: the same values must give byte-identical manifests."""
    assert render(chart, values).manifests == render(chart, values).manifests


ADMISSION_KINDS = Counter(
    {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Service": 1,
        "Deployment": 1,
        "PodDisruptionBudget": 1,
        "ValidatingWebhookConfiguration": 1,
        # The delivery key's invariants, enforced by the API server (admission.policy.enabled).
        "ValidatingAdmissionPolicy": 1,
        "ValidatingAdmissionPolicyBinding": 1,
        # tls.mode certManager (default): self-signed Issuer, CA Certificate, CA Issuer, serving Certificate.
        "Issuer": 2,
        "Certificate": 2,
    }
)
PRUNER_KINDS = Counter({"ServiceAccount": 1, "CronJob": 1})


@pytest.mark.parametrize(
    ("admission", "pruner", "expected"),
    [
        (True, True, ADMISSION_KINDS + PRUNER_KINDS),
        (True, False, ADMISSION_KINDS),
        (False, True, PRUNER_KINDS),
        (False, False, Counter()),
    ],
    ids=["both", "webhook-only", "pruner-only", "neither"],
)
def test_toggles_render_exactly_the_expected_kinds(chart: helm.Chart, admission: bool, pruner: bool, expected: Counter[str]) -> None:
    out = render(chart, {"admission": {"enabled": admission}, "pruner": {"enabled": pruner}})
    assert out.kinds() == expected
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in out.objects}
    assert components == ({"admission"} if admission else set()) | ({"pruner"} if pruner else set())


def test_optional_objects_follow_their_toggles(chart: helm.Chart) -> None:
    out = render(chart, {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True}, "serviceMonitor": {"enabled": True}})
    assert out.kinds()["NetworkPolicy"] == 2
    assert out.kinds()["ServiceMonitor"] == 1
    pruner_only = render(chart, {"admission": {"enabled": False}, "networkPolicy": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    assert pruner_only.kinds()["NetworkPolicy"] == 1
    assert pruner_only.kinds()["ServiceMonitor"] == 0


def test_every_object_is_labelled_and_namespaced(chart: helm.Chart) -> None:
    out = render(chart, EVERYTHING_ON)
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for o in out.objects:
        meta = o["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if o["kind"] in cluster_scoped:
            assert "namespace" not in meta, o["kind"]
        elif o["kind"] in ("Role", "RoleBinding"):
            # Read access in each namespace the webhook checks (test_access).
            assert meta["namespace"] in EVERYTHING_ON["admission"]["namespaces"], (o["kind"], meta["name"])
        else:
            assert meta["namespace"] == NAMESPACE, (o["kind"], meta["name"])


def test_names_fit_kubernetes_limits_for_a_long_release_name(chart: helm.Chart) -> None:
    long_name = "a-very-long-release-name-for-orchestration-dedupe-x"  # 51 characters, within Helm's 53
    out = render(chart, EVERYTHING_ON, name=long_name)
    dns_label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for o in out.objects:
        name = o["metadata"]["name"]
        assert len(name) <= 63 and dns_label.match(name), name
        for value in o["metadata"]["labels"].values():
            assert len(value) <= 63, value
    # A CronJob's Jobs get an 11-character suffix, so its own name must fit in 52.
    assert len(out.one("CronJob")["metadata"]["name"]) <= 52


def test_webhook_registration(chart: helm.Chart) -> None:
    out = render(chart)
    vwc = out.one("ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    # Audit annotations are "<webhook name>/decision"; docs/OPERATIONS.md quotes this name.
    assert hook["name"] == "dedupe.orchestration.proompteng.ai"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    (rule,) = hook["rules"]
    assert rule == {
        "apiGroups": ["orchestration.proompteng.ai"],
        "apiVersions": ["v1alpha1"],
        # CREATE only: updates, finalizer removal and deletes never depend on the webhook.
        "operations": ["CREATE"],
        # Not orchestrationruns/status: status writes need not reach the webhook.
        "resources": ["orchestrationruns"],
        "scope": "Namespaced",
    }
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "jangar.proompteng.ai/delivery-id", "operator": "Exists"}]}
    # Every namespace, the release's own included (test_access).
    assert hook["namespaceSelector"] == {}
    svc = out.one("Service")
    deploy = out.one("Deployment")
    service_ref = hook["clientConfig"]["service"]
    assert service_ref == {"name": svc["metadata"]["name"], "namespace": NAMESPACE, "path": "/validate", "port": 10250}
    https = next(p for p in svc["spec"]["ports"] if p["name"] == "https")
    assert https["port"] == 10250 and https["targetPort"] == "https"
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "https", "containerPort": 10250, "protocol": "TCP"} in container["ports"]


def test_the_registration_applies_after_the_deployment(chart: helm.Chart) -> None:
    """Argo CD: a later sync wave than the Deployment's (waited for until healthy); plain Helm,
    on request, post-install/post-upgrade hooks."""
    out = render(chart)
    annotations = out.one("ValidatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/sync-wave"] == "1"
    assert "helm.sh/hook" not in annotations
    assert "argocd.argoproj.io/sync-wave" not in (out.one("Deployment")["metadata"].get("annotations") or {})
    hooked = render(chart, {"admission": {"registration": {"helmHook": True}, "mutating": {"enabled": True}}})
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = hooked.one(kind)["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-install,post-upgrade", kind
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation", kind


def test_delivery_key_policy_and_binding(chart: helm.Chart) -> None:
    out = render(chart)
    policy = out.one("ValidatingAdmissionPolicy")
    binding = out.one("ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {}}
    # The shipped CEL is the file the real-API-server tests load.
    shipped = json.loads((CHART_DIR / "files" / "delivery-key-policy.json").read_text())
    assert policy["spec"] == shipped
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["CREATE", "UPDATE"] and rule["resources"] == ["orchestrationruns"]
    scoped = render(chart, {"admission": {"namespaces": ["agents"]}})
    assert scoped.one("ValidatingAdmissionPolicyBinding")["spec"]["matchResources"] == {
        "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agents"]}]}
    }
    off = render(chart, {"admission": {"policy": {"enabled": False}}})
    assert not off.of_kind("ValidatingAdmissionPolicy") and not off.of_kind("ValidatingAdmissionPolicyBinding")


def test_optional_mutating_webhook(chart: helm.Chart) -> None:
    assert not render(chart).of_kind("MutatingWebhookConfiguration")
    out = render(chart, {"admission": {"mutating": {"enabled": True}, "namespaces": ["agents"]}})
    (hook,) = out.one("MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == "/mutate"
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "jangar.proompteng.ai/delivery-id", "operator": "DoesNotExist"}]}
    assert hook["sideEffects"] == "None" and hook["reinvocationPolicy"] == "Never"
    (validating,) = out.one("ValidatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"] == validating["namespaceSelector"]


def test_webhook_values_pass_through(chart: helm.Chart) -> None:
    out = render(
        chart,
        {"admission": {"failurePolicy": "Ignore", "timeoutSeconds": 10, "port": 8443, "namespaces": ["agents", "ci"]}},
    )
    (hook,) = out.one("ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 10
    assert hook["clientConfig"]["service"]["port"] == 8443
    assert hook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agents", "ci"]}]
    }
    container = out.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--listen=0.0.0.0:8443" in container["args"]


def test_cross_field_checks_fail_the_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="storeTimeoutMs"):
        render(chart, {"admission": {"timeoutSeconds": 2, "storeTimeoutMs": 2000}})
    with pytest.raises(helm.HelmRenderError, match="maxRuntimeSeconds"):
        render(chart, {"pruner": {"maxRuntimeSeconds": 3600, "activeDeadlineSeconds": 3600}})
    # With the part switched off its checks do not apply.
    render(chart, {"admission": {"enabled": False, "timeoutSeconds": 2, "storeTimeoutMs": 2000}})


def test_deployment_availability(chart: helm.Chart) -> None:
    out = render(chart)
    deploy = out.one("Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    assert pod["terminationGracePeriodSeconds"] > 5 + 20, "preStop sleep + the binary's 20 s shutdown grace"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    for tsc in pod["topologySpreadConstraints"]:
        assert tsc["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    pdb = out.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert render(chart, {"admission": {"pdb": {"minAvailable": "50%"}}}).one("PodDisruptionBudget")["spec"] == {
        "minAvailable": "50%",
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": pdb["spec"]["selector"],
    }
    assert "PodDisruptionBudget" not in render(chart, {"admission": {"pdb": {"enabled": False}}}).kinds()
    assert "lifecycle" not in render(chart, {"admission": {"preStopSleepSeconds": 0}}).one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_scheduling_values_pass_through(chart: helm.Chart) -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}]
    out = render(
        chart,
        {
            "admission": {"affinity": affinity, "tolerations": tolerations, "nodeSelector": {"pool": "system"}, "priorityClassName": "system-cluster-critical", "topologySpreadConstraints": []},
            "pruner": {"affinity": affinity, "tolerations": tolerations},
        },
    )
    for _, pod in out.pod_specs():
        assert pod["affinity"] == affinity and pod["tolerations"] == tolerations
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert "topologySpreadConstraints" not in pod


def test_restricted_security_context_everywhere(chart: helm.Chart) -> None:
    out = render(chart, EVERYTHING_ON)
    specs = out.pod_specs()
    assert len(specs) == 2
    for name, pod in specs:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), (name, key)
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["runAsNonRoot"] is True, name
            assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_image_reference(chart: helm.Chart) -> None:
    out = render(chart)
    images = {c["image"] for _, pod in out.pod_specs() for c in pod["containers"]}
    assert images == {f"ghcr.io/proompteng/orchestration-dedupe:{chart.metadata['appVersion']}"}
    digest = "sha256:" + "a" * 64
    out = render(chart, {"image": {"repository": "registry.example/od", "tag": "1.2.3", "digest": digest, "pullPolicy": "Always"}})
    for _, pod in out.pod_specs():
        assert pod["containers"][0]["image"] == f"registry.example/od:1.2.3@{digest}"
        assert pod["containers"][0]["imagePullPolicy"] == "Always"


def test_rbac_grants_only_reads_of_orchestrationruns(chart: helm.Chart) -> None:
    out = render(chart)
    role = out.one("ClusterRole")
    verbs = ["get", "list", "watch"]  # the take-over lookup (get) and the reconciler (list, watch)
    assert role["rules"] == [{"apiGroups": ["orchestration.proompteng.ai"], "resources": ["orchestrationruns"], "verbs": verbs}]
    binding = out.one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]
    # The pruner never talks to the API server.
    cron_pod = out.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron_pod["automountServiceAccountToken"] is False


def test_pruner_cronjob(chart: helm.Chart) -> None:
    out = render(chart)
    cron = out.one("CronJob")
    spec = cron["spec"]
    assert spec["schedule"] == "17 3 * * *"
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 1800 < job["activeDeadlineSeconds"] < 24 * 3600, "above maxRuntimeSeconds, below the nightly period"
    assert job["backoffLimit"] >= 0
    assert job["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy requires it"
    out = render(chart, {"pruner": {"schedule": "@hourly", "timeZone": "Europe/Oslo", "suspend": True, "concurrencyPolicy": "Replace"}})
    spec = out.one("CronJob")["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"], spec["concurrencyPolicy"]) == ("@hourly", "Europe/Oslo", True, "Replace")
    job = render(chart, {"pruner": {"podFailurePolicy": {"rules": []}}}).one("CronJob")["spec"]["jobTemplate"]["spec"]
    assert "podFailurePolicy" not in job


def test_env_overlay_and_database_secret(chart: helm.Chart) -> None:
    out = render(
        chart,
        {
            "database": {"secretRef": {"name": "pg-app", "key": "dsn"}},
            "retentionDays": 14,
            "claimScope": "cluster",
            "env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_LOG_FORMAT": "text", "RUST_BACKTRACE": "1"}},
            "admission": {"env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE": "32", "RUST_BACKTRACE": "full"}}},
            "pruner": {"env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE": "1000"}}},
        },
    )
    admission = env_of(out.one("Deployment")["spec"]["template"]["spec"]["containers"][0])
    pruner = env_of(out.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    for env in (admission, pruner):
        assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "pg-app", "key": "dsn"}}}
        # env.vars wins over the chart's derived value (logFormat: json).
        assert env["JANGAR_ORCHESTRATION_DEDUPE_LOG_FORMAT"]["value"] == "text"
        names = [n for n in env if n != "DATABASE_URL"]
        assert names == sorted(names), "stable order for server-side apply and diffs"
        assert all(isinstance(e.get("value", ""), str) for e in env.values())
    assert admission["RUST_BACKTRACE"]["value"] == "full"  # the component's map overlays the base
    assert pruner["RUST_BACKTRACE"]["value"] == "1"
    assert admission["JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE"]["value"] == "32"
    assert "JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE" not in pruner
    assert admission["JANGAR_ORCHESTRATION_DEDUPE_CLAIM_SCOPE"]["value"] == "cluster"
    assert pruner["JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS"]["value"] == "14"
    # The component map wins over the derived value too; large integers stay integers.
    assert pruner["JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE"]["value"] == "1000"
    big = render(chart, {"pruner": {"batchSize": 1000000}})
    env = env_of(big.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert env["JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE"]["value"] == "1000000"


def test_network_policies(chart: helm.Chart) -> None:
    out = render(chart, {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True}})
    webhook = out.one("NetworkPolicy", "-admission")
    assert webhook["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = webhook["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "https", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in webhook["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 443, 6443}
    pruner = out.one("NetworkPolicy", "-pruner")
    assert "ingress" not in pruner["spec"] and "Ingress" in pruner["spec"]["policyTypes"]
    assert {p["port"] for rule in pruner["spec"]["egress"] for p in rule["ports"]} == {53, 5432}
    deploy_labels = out.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert webhook["spec"]["podSelector"]["matchLabels"].items() <= deploy_labels.items()
    cron_labels = out.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert pruner["spec"]["podSelector"]["matchLabels"].items() <= cron_labels.items()
    # Scraped: the metrics port opens too.
    scraped = render(chart, {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True}, "serviceMonitor": {"enabled": True}})
    ports = [r["ports"][0]["port"] for r in scraped.one("NetworkPolicy", "-admission")["spec"]["ingress"]]
    assert ports == ["https", "metrics"]


def test_service_monitor_scrapes_the_metrics_port(chart: helm.Chart) -> None:
    out = render(chart, {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    sm = out.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    svc = out.one("Service")
    assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_notes_tell_how_to_check_the_install(chart: helm.Chart) -> None:
    notes = render(chart).notes
    assert "rollout status deployment/" in notes
    assert "--dry-run=server" in notes
    assert "create job --from=cronjob/" in notes
    assert "Certificate" in notes or "certificate" in notes
    assert "create job" not in render(chart, {"pruner": {"enabled": False}}).notes
    assert "rollout status" not in render(chart, {"admission": {"enabled": False}}).notes
