"""The chart's alerts (prometheusRule.enabled) and Grafana dashboard (grafanaDashboard.enabled):
both toggles, the rules unit-tested offline with promtool, every runbook link pointing at a
section of docs/OPERATIONS.md, and the dashboard's JSON. That every metric name in the rules and
the dashboard is one the real dedupe-admission exports is checked against a live /metrics in
tests/tests/metrics_names.rs (it needs the webhook running against PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART_DIR, KUBE_VERSION, NAMESPACE, REPO, render

PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "orchestration-dedupe.json"
OPERATIONS = REPO / "docs" / "OPERATIONS.md"

ADMISSION_ALERTS = {
    "OrchestrationDedupeWebhookCallsFailing": "critical",
    "OrchestrationDedupeWebhookUnavailable": "critical",
    "OrchestrationDedupeStoreFailing": "critical",
    "OrchestrationDedupeSlow": "warning",
    "OrchestrationDedupeCertificateExpiring": "warning",
    "OrchestrationDedupeCertificateReloadFailing": "warning",
    "OrchestrationDedupeTakeovers": "warning",
    "OrchestrationDedupeReconcileStale": "warning",
    "OrchestrationDedupeDuplicateRuns": "warning",
}
# Alerts on series the cluster exports, not the webhook: the API server's and kube-state-metrics'.
CLUSTER_SIDE_ALERTS = {"OrchestrationDedupeWebhookCallsFailing", "OrchestrationDedupeWebhookUnavailable"}
RECONCILE_ALERTS = {"OrchestrationDedupeReconcileStale", "OrchestrationDedupeDuplicateRuns"}
PRUNER_ALERTS = {"OrchestrationDedupePrunerNotSucceeding": "warning"}


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path or not Path(path).is_file():
        pytest.fail("promtool not found: run the chart tests with `make chart-test` (it installs promtool into .venv), or set PROMTOOL")
    return path


def rules_of(chart: helm.Chart, values: dict[str, Any]) -> dict[str, Any] | None:
    found = render(chart, values).of_kind("PrometheusRule")
    assert len(found) <= 1
    return found[0] if found else None


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


# --- toggles ------------------------------------------------------------------------------


def test_both_are_off_by_default(chart: helm.Chart) -> None:
    out = render(chart, {})
    assert not out.of_kind("PrometheusRule")
    assert not [c for c in out.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_prometheus_rule_toggle_follows_the_parts_installed(chart: helm.Chart) -> None:
    rule = rules_of(chart, {"prometheusRule": {"enabled": True}})
    assert rule is not None
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert {a: r["labels"]["severity"] for a, r in alerts(rule).items()} == ADMISSION_ALERTS | PRUNER_ALERTS

    rule = rules_of(chart, {"prometheusRule": {"enabled": True}, "pruner": {"enabled": False}})
    assert rule is not None and set(alerts(rule)) == set(ADMISSION_ALERTS)
    rule = rules_of(chart, {"prometheusRule": {"enabled": True}, "admission": {"enabled": False}})
    assert rule is not None and set(alerts(rule)) == set(PRUNER_ALERTS)
    assert rules_of(chart, {"prometheusRule": {"enabled": True}, "admission": {"enabled": False}, "pruner": {"enabled": False}}) is None
    # The reconciler's alerts only where it runs.
    rule = rules_of(chart, {"prometheusRule": {"enabled": True}, "admission": {"reconcile": {"enabled": False}}})
    assert rule is not None and set(alerts(rule)) == (set(ADMISSION_ALERTS) - RECONCILE_ALERTS) | set(PRUNER_ALERTS)


def test_rule_labels_selector_and_thresholds_come_from_values(chart: helm.Chart) -> None:
    rule = rules_of(
        chart,
        {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "alertLabels": {"team": "platform"},
                "metricSelector": 'cluster="prod", service="dedupe"',
                "runbookBaseUrl": "https://docs.example.com/dedupe/OPERATIONS.md/",
                "latencyThresholdSeconds": 2.5,
                "takeoversPerHour": 3,
                "prunerMaxAgeHours": 30,
                "apiServerSelector": 'cluster="prod", job="kube-apiserver"',
            }
        }
    )
    assert rule is not None
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = alerts(rule)
    for name, r in by_name.items():
        assert r["labels"]["team"] == "platform", name
        assert r["annotations"]["runbook_url"].startswith("https://docs.example.com/dedupe/OPERATIONS.md#"), name
        if name in ADMISSION_ALERTS and name not in CLUSTER_SIDE_ALERTS:
            assert 'cluster="prod", service="dedupe"' in r["expr"], name
            assert 'job="' not in r["expr"], name
    calls = by_name["OrchestrationDedupeWebhookCallsFailing"]["expr"]
    assert calls.count('cluster="prod", job="kube-apiserver", name="dedupe.orchestration.proompteng.ai"') == 2, calls
    assert 'deployment="dedupe-orchestration-dedupe-admission"' in by_name["OrchestrationDedupeWebhookUnavailable"]["expr"]
    assert by_name["OrchestrationDedupeSlow"]["expr"].rstrip().endswith("> 2.5")
    assert by_name["OrchestrationDedupeTakeovers"]["expr"].rstrip().endswith("> 3")
    assert f"> {30 * 3600}" in by_name["OrchestrationDedupePrunerNotSucceeding"]["expr"]


def test_dashboard_toggle_renders_the_file_for_the_sidecar(chart: helm.Chart) -> None:
    out = render(chart, {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}}})
    (cm,) = [c for c in out.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    assert json.loads(cm["data"]["orchestration-dedupe.json"]) == json.loads(DASHBOARD_FILE.read_text())
    kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)

    out = render(chart, {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "label": "dashboards", "labelValue": "grafana"}})
    (cm,) = [c for c in out.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dashboards"] == "grafana"


# --- the rules, offline -------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_rules(chart: helm.Chart, tmp_path: Path) -> None:
    rule = rules_of(chart, {"prometheusRule": {"enabled": True}})
    assert rule is not None
    groups = {"groups": rule["spec"]["groups"]}
    full = tmp_path / "full" / "rules.yaml"
    full.parent.mkdir()
    full.write_text(yaml.safe_dump(groups))
    # The whole file, annotations' templates included.
    check = subprocess.run([promtool(), "check", "rules", str(full)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    # The unit tests compare annotations exactly; the descriptions print $value, so they go.
    for group in groups["groups"]:
        for r in group["rules"]:
            r["annotations"].pop("description")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(PROMTOOL_TESTS, tmp_path / "alerts_test.yaml")
    run = subprocess.run([promtool(), "test", "rules", str(tmp_path / "alerts_test.yaml")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # Every alert is exercised by the unit tests.
    tested = set(re.findall(r"alertname: (\w+)", PROMTOOL_TESTS.read_text()))
    assert tested == set(ADMISSION_ALERTS) | set(PRUNER_ALERTS)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """Markdown headings, outside fenced code blocks (where `#` starts a comment)."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.+)$", line)):
            found.append(m.group(1))
    return found


def test_every_runbook_link_is_a_section_of_operations_md(chart: helm.Chart) -> None:
    anchors = {github_anchor(h) for h in headings(OPERATIONS.read_text())}
    rule = rules_of(chart, {"prometheusRule": {"enabled": True}})
    assert rule is not None
    for name, r in alerts(rule).items():
        url = r["annotations"]["runbook_url"]
        base, _, fragment = url.partition("#")
        assert base.endswith("/docs/OPERATIONS.md"), url
        assert fragment == name.lower(), url
        assert fragment in anchors, f"{name}: no heading '{name}' in docs/OPERATIONS.md"
        assert r["annotations"]["summary"] and r["annotations"]["description"], name


# --- the dashboard ------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def test_dashboard_is_valid_json_with_one_query_per_target() -> None:
    d = dashboard()
    assert d["uid"] == "orchestration-dedupe" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            # Every query is scoped to the chosen namespace and job.
            for selector in re.findall(r"orchestration_dedupe_\w+\{([^}]*)\}", t["expr"]):
                assert 'namespace=~"$namespace"' in selector and 'job=~"$job"' in selector, t["expr"]
        # Panels do not overlap on the 24-column grid.
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_dashboard_shows_what_the_issue_asks_from_exported_metrics_only() -> None:
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    names = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", exprs))
    assert names and all(n.startswith("orchestration_dedupe_") for n in names), names
    for needed in (
        "orchestration_dedupe_requests_total",  # decisions by kind
        "orchestration_dedupe_request_duration_seconds_bucket",  # p50/p99
        "orchestration_dedupe_in_flight_requests",
        "orchestration_dedupe_http_errors_total",  # 503s
        "orchestration_dedupe_takeovers_total",
        "orchestration_dedupe_serving_certificate_expiry_timestamp_seconds",
    ):
        assert needed in names, needed
    assert "sum by (decision)" in exprs and "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
