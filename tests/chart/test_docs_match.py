"""What the docs tell operators to type or expect matches what the chart renders."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import helm_python as helm
import yaml

from conftest import REPO, render

DOCS = [REPO / "README.md", REPO / "docs" / "OPERATIONS.md", CHART_README := REPO / "charts" / "orchestration-dedupe" / "README.md"]


def dry_run_block(notes: str) -> str:
    start = notes.index("kubectl create --dry-run=server")
    end = notes.index("\nRUN\n", start) + len("\nRUN\n")
    return notes[start:end]


def test_the_notes_dry_run_can_be_pasted_into_a_shell(chart: helm.Chart, tmp_path: Path) -> None:
    """Pasted as printed, the heredoc ends (its closing RUN starts a line) and feeds a run."""
    for values, namespace in (({}, "agents"), ({"admission": {"namespaces": ["ci", "agents"]}}, "ci")):
        block = dry_run_block(render(chart, values, name="dedupe", namespace="agents").notes)
        fake = tmp_path / "kubectl"
        fake.write_text("#!/bin/sh\ncat\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        out = subprocess.run(
            ["bash", "-c", block], capture_output=True, text=True, timeout=10, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        )
        assert out.returncode == 0 and "here-document" not in out.stderr, out.stderr
        run = yaml.safe_load(out.stdout)
        assert run["kind"] == "OrchestrationRun" and run["metadata"]["namespace"] == namespace
        assert run["metadata"]["labels"]["jangar.proompteng.ai/delivery-id"] == run["spec"]["deliveryId"]


def test_docs_name_the_webhook_configuration_as_rendered(chart: helm.Chart) -> None:
    out = render(chart, name="dedupe", namespace="agents")
    registration = out.one("ValidatingWebhookConfiguration")
    name, entry = registration["metadata"]["name"], registration["webhooks"][0]["name"]
    assert (name, entry) == ("dedupe-orchestration-dedupe-admission", "dedupe.orchestration.proompteng.ai")
    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    assert f"`ValidatingWebhookConfiguration` `{name}`" in operations
    assert f"`ValidatingWebhookConfiguration` `{entry}`" not in operations
    assert f"validatingwebhookconfiguration {entry}" not in operations.lower()
    assert f"kubectl get validatingwebhookconfiguration {name}" in out.notes


def test_docs_use_one_example_install() -> None:
    """Release `dedupe` in namespace `agents` everywhere (the Secret and CA names of a
    CloudNativePG cluster called jangar stay)."""
    for doc in DOCS + [REPO / "claims" / "kubectl-dedupe"]:
        text = doc.read_text()
        assert not re.search(r"-n jangar\b|\.jangar\.svc|namespace `jangar`", text), doc
    for doc in DOCS:
        for command in re.findall(r"helm (?:install|upgrade) \S+ charts/orchestration-dedupe -n \S+", doc.read_text()):
            assert command == "helm install dedupe charts/orchestration-dedupe -n agents" or command == "helm upgrade dedupe charts/orchestration-dedupe -n agents", (doc, command)


def test_values_say_the_image_holds_the_three_binaries() -> None:
    values = (REPO / "charts" / "orchestration-dedupe" / "values.yaml").read_text()
    assert "holds both binaries" not in values
    dockerfile = (REPO / "Dockerfile").read_text()
    for binary in ("dedupe-admission", "dedupe-pruner", "dedupe-claims"):
        assert binary in values and binary in dockerfile, binary


def test_operations_quotes_what_kubectl_and_the_webhook_say() -> None:
    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    # The webhook's 503 as kubectl 1.32 prints it (captured by tests/tests/kube_footprint.rs):
    # in the outage table and in the troubleshooting table.
    unavailable = 'failed calling webhook "dedupe.orchestration.proompteng.ai": failed to call webhook: the server is currently unable to handle the request'
    assert operations.count(unavailable) >= 2
    assert "failed calling webhook … 503`" not in operations
    # After the holder was deleted, a resubmission is told what decision.rs says.
    decision = (REPO / "admission" / "src" / "decision.rs").read_text()
    for said in ("that run exists (confirmed)", "that run existed and was deleted; deleting a run does not"):
        assert said in decision, said
        assert said in " ".join(operations.split()), said
    assert "the message says so" not in operations
