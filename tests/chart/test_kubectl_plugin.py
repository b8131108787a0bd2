"""The `kubectl-dedupe` plugin (pruner/kubectl-dedupe), run with a fake `kubectl` first on PATH
that records every call and answers the Deployment lookup: the exec it runs, the options it
takes, and that its label selector finds the Deployment the chart renders."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from conftest import REPO, render

PLUGIN = REPO / "pruner" / "kubectl-dedupe"

# A fake kubectl: each call's arguments, one per line, then a line "--END--", appended to
# $FAKE_LOG. `get deployments` prints $FAKE_FOUND (or $FAKE_FOUND_ALL with --all-namespaces),
# `get cronjobs` $FAKE_RETENTION; `exec` exits $FAKE_EXEC_EXIT, as kubectl passes the remote code on.
FAKE_KUBECTL = r"""#!/bin/sh
for a in "$@"; do printf '%s\n' "$a" >> "$FAKE_LOG"; done
echo --END-- >> "$FAKE_LOG"
case " $* " in
  *" exec "*) echo "exec ran"; exit "${FAKE_EXEC_EXIT:-0}" ;;
  *" --all-namespaces "*) printf '%b' "${FAKE_FOUND_ALL:-}" ;;
  *" get cronjobs "*) printf '%s' "${FAKE_RETENTION:-}" ;;
  *" get deployments "*) printf '%b' "${FAKE_FOUND:-}" ;;
  *) echo "fake kubectl: unexpected call: $*" >&2; exit 99 ;;
esac
"""


class Plugin:
    def __init__(self, tmp: Path):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        fake = self.bin / "kubectl"
        fake.write_text(FAKE_KUBECTL)
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        self.log = tmp / "calls.log"

    def run(
        self, *args: str, found: str = "", found_all: str = "", retention: str = "", exec_exit: int = 0
    ) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {
            # The fake first; the real kubectl (if any) must never be reached.
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "FAKE_LOG": str(self.log),
            "FAKE_FOUND": found,
            "FAKE_FOUND_ALL": found_all,
            "FAKE_RETENTION": retention,
            "FAKE_EXEC_EXIT": str(exec_exit),
        }
        return subprocess.run(["sh", str(PLUGIN), *args], capture_output=True, text=True, env=env, timeout=30)

    def calls(self) -> list[list[str]]:
        calls, current = [], []
        for line in self.log.read_text().splitlines():
            if line == "--END--":
                calls.append(current)
                current = []
            else:
                current.append(line)
        return calls


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    return Plugin(tmp_path)


SELECTOR = "app.kubernetes.io/part-of=orchestration-dedupe,app.kubernetes.io/component=admission"
# `namespace name release` of each Deployment found, as the plugin's jsonpath prints them.
ONE = "jangar dedupe-orchestration-dedupe-admission dedupe\\n"


def lookup_call(call: list[str]) -> dict[str, Any]:
    """The options of a `get deployments` call."""
    assert "get" in call and "deployments" in call, call
    return {"selector": call[call.index("-l") + 1], "all": "--all-namespaces" in call}


def test_runs_dedupe_claims_in_the_webhook_deployment_with_the_same_arguments(plugin: Plugin) -> None:
    out = plugin.run("-n", "jangar", "get", "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11", "-o", "json", found=ONE, retention="30")
    assert out.returncode == 0, out
    assert out.stdout == "exec ran\n" and out.stderr == ""
    lookup, pruner, exec_ = plugin.calls()
    assert lookup[:2] == ["--namespace", "jangar"]
    assert lookup_call(lookup) == {"selector": SELECTOR, "all": False}
    # The pruner's retention, from the same release's CronJob.
    assert pruner[:4] == ["--namespace", "jangar", "get", "cronjobs"]
    assert pruner[pruner.index("-l") + 1] == (
        "app.kubernetes.io/part-of=orchestration-dedupe,app.kubernetes.io/component=pruner,app.kubernetes.io/instance=dedupe"
    )
    assert "JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS" in pruner[pruner.index("-o") + 1]
    assert exec_ == [
        "--namespace", "jangar",
        "exec", "deploy/dedupe-orchestration-dedupe-admission", "-c", "admission",
        "--", "/usr/local/bin/dedupe-claims", "--retention-days", "30",
        "get", "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11", "-o", "json",
    ]  # fmt: skip


def test_without_a_pruner_the_retention_is_left_to_dedupe_claims_and_said_so(plugin: Plugin) -> None:
    for retention in ("", "not-a-number"):
        out = plugin.run("-n", "jangar", "stats", found=ONE, retention=retention)
        assert out.returncode == 0, out
        assert "pass --retention-days N" in out.stderr, out
        exec_ = plugin.calls()[-1]
        assert exec_[exec_.index("--") + 1 :] == ["/usr/local/bin/dedupe-claims", "stats"]


def test_exit_codes_of_dedupe_claims_come_back(plugin: Plugin) -> None:
    for code in (1, 2, 3, 4):
        out = plugin.run("-n", "jangar", "get", "d1", found=ONE, exec_exit=code)
        assert out.returncode == code, out


def test_options_before_the_command_are_the_plugins_and_after_it_dedupe_claims(plugin: Plugin) -> None:
    out = plugin.run(
        "--context", "prod", "--kubeconfig", "/tmp/kc", "--namespace=jangar", "--release", "dedupe",
        "list", "--namespace", "agents", "--older-than", "2m", "-n", "ignored-by-the-plugin",
        found=ONE, retention="7",
    )  # fmt: skip
    assert out.returncode == 0, out
    lookup, _, exec_ = plugin.calls()
    assert lookup[:4] == ["--kubeconfig", "/tmp/kc", "--context", "prod"]
    assert lookup_call(lookup)["selector"] == SELECTOR + ",app.kubernetes.io/instance=dedupe"
    assert exec_[:6] == ["--kubeconfig", "/tmp/kc", "--context", "prod", "--namespace", "jangar"]
    sep = exec_.index("--")
    assert exec_[sep + 1 :] == ["/usr/local/bin/dedupe-claims", "--retention-days", "7", "list", "--namespace", "agents", "--older-than", "2m", "-n", "ignored-by-the-plugin"]


def test_arguments_are_passed_unsplit(plugin: Plugin) -> None:
    out = plugin.run("-njangar", "--", "release", "a b", "--orchestration", "", "--yes", found=ONE, retention="7")
    assert out.returncode == 0, out
    exec_ = plugin.calls()[-1]
    assert exec_[exec_.index("--") + 1 :] == ["/usr/local/bin/dedupe-claims", "--retention-days", "7", "release", "a b", "--orchestration", "", "--yes"]


def test_without_a_namespace_it_looks_in_the_contexts_then_everywhere(plugin: Plugin) -> None:
    out = plugin.run("stats", found="", found_all="agents-system dedupe-orchestration-dedupe-admission dedupe\\n", retention="7")
    assert out.returncode == 0, out
    here, everywhere, _, exec_ = plugin.calls()
    assert "--namespace" not in here and not lookup_call(here)["all"]
    assert lookup_call(everywhere)["all"]
    assert exec_[:4] == ["--namespace", "agents-system", "exec", "deploy/dedupe-orchestration-dedupe-admission"]

    # Found in the context's namespace: no cluster-wide lookup.
    out = plugin.run("stats", found=ONE, retention="7")
    assert out.returncode == 0, out
    assert len(plugin.calls()) == 3, "the lookup, the pruner's retention, the exec"


def test_none_or_several_deployments_are_refused_without_an_exec(plugin: Plugin) -> None:
    out = plugin.run("-n", "jangar", "stats")
    assert out.returncode == 1
    assert "no orchestration-dedupe webhook Deployment" in out.stderr and "-n NAMESPACE" in out.stderr
    assert len(plugin.calls()) == 1, "no exec, and with -n no cluster-wide lookup"

    out = plugin.run("stats", found="", found_all="a dedupe-a-admission dedupe-a\\nb dedupe-b-admission dedupe-b\\n")
    assert out.returncode == 1
    assert "--release" in out.stderr and "a/dedupe-a-admission b/dedupe-b-admission" in out.stderr
    assert not any("exec" in c for c in plugin.calls())


def test_usage(plugin: Plugin) -> None:
    out = plugin.run("--help")
    assert out.returncode == 0 and "kubectl dedupe" in out.stdout and plugin.calls() == []
    for args in ([], ["-n"], ["--bogus", "get", "d1"], ["-n", "jangar"]):
        out = plugin.run(*args, found=ONE)
        assert out.returncode == 2, (args, out)
        assert plugin.calls() == [], args


def test_the_selectors_find_the_charts_objects_and_the_image_ships_the_cli(chart: helm.Chart, plugin: Plugin) -> None:
    plugin.run("-n", "jangar", "stats", found=ONE, retention="7")
    lookup, pruner_lookup, exec_ = plugin.calls()
    selector = dict(kv.split("=", 1) for kv in lookup_call(lookup)["selector"].split(","))
    pruner_selector = dict(kv.split("=", 1) for kv in pruner_lookup[pruner_lookup.index("-l") + 1].split(","))
    for values in ({}, {"nameOverride": "other", "commonLabels": {"team": "x"}}, {"fullnameOverride": "dd"}, {"retentionDays": 30}):
        out = render(chart, values)
        deployment = out.one("Deployment")
        labels = deployment["metadata"]["labels"]
        assert selector.items() <= labels.items(), (values, labels)
        # The release the plugin reads from the Deployment is the one its pruner carries.
        assert labels["app.kubernetes.io/instance"] == pruner_selector["app.kubernetes.io/instance"] == "dedupe"
        containers = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
        assert exec_[exec_.index("-c") + 1] in containers

        cronjob = out.one("CronJob")
        assert pruner_selector.items() <= cronjob["metadata"]["labels"].items(), (values, cronjob["metadata"]["labels"])
        first = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in first["env"]}
        assert env["JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS"] == str(values.get("retentionDays", 7))
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "/usr/local/bin/dedupe-claims" in dockerfile


def test_the_plugin_is_executable_posix_sh() -> None:
    assert PLUGIN.stat().st_mode & stat.S_IXUSR, "chmod +x pruner/kubectl-dedupe"
    assert PLUGIN.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(PLUGIN)], check=True)
