"""The `kubectl-dedupe` plugin (claims/kubectl-dedupe), run with a fake `kubectl` first on PATH
that records every call and answers the Deployment lookup: the exec it runs, the options it
takes, and that its label selector finds the Deployment the chart renders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from conftest import REPO, render

PLUGIN = REPO / "claims" / "kubectl-dedupe"

# A fake kubectl: each call's arguments, one per line, then a line "--END--", appended to
# $FAKE_LOG. `get deployments` prints $FAKE_FOUND (or $FAKE_FOUND_ALL with --all-namespaces),
# `get cronjobs` $FAKE_RETENTION, `get deployment NAME` (the pod template) $FAKE_TEMPLATE;
# `exec` and `run` exit $FAKE_EXEC_EXIT / $FAKE_RUN_EXIT, as kubectl passes the remote code on
# (`run` after $FAKE_RUN_SLEEP seconds); `delete` succeeds.
FAKE_KUBECTL = r"""#!/bin/sh
for a in "$@"; do printf '%s\n' "$a" >> "$FAKE_LOG"; done
echo --END-- >> "$FAKE_LOG"
case " $* " in
  *" exec "*) echo "exec ran"; exit "${FAKE_EXEC_EXIT:-0}" ;;
  *" run "*) echo "run ran"; echo "from the pod's stderr" >&2
    [ "${FAKE_RUN_SLEEP:-0}" = 0 ] || exec sleep "$FAKE_RUN_SLEEP"  # one process, as kubectl is
    exit "${FAKE_RUN_EXIT:-0}" ;;
  *" delete pod "*) exit 0 ;;
  *" --all-namespaces "*) printf '%b' "${FAKE_FOUND_ALL:-}" ;;
  *" get cronjobs "*) printf '%s' "${FAKE_RETENTION:-}" ;;
  *" get deployments "*) printf '%b' "${FAKE_FOUND:-}" ;;
  *" get deployment "*) printf '%s' "${FAKE_TEMPLATE:-}" ;;
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

    def env(
        self, found: str = "", found_all: str = "", retention: str = "", exec_exit: int = 0,
        template: str = "", run_exit: int = 0, run_sleep: int = 0,
    ) -> dict[str, str]:
        return {
            # The fake first; the real kubectl (if any) must never be reached.
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "FAKE_LOG": str(self.log),
            "FAKE_FOUND": found,
            "FAKE_FOUND_ALL": found_all,
            "FAKE_RETENTION": retention,
            "FAKE_EXEC_EXIT": str(exec_exit),
            "FAKE_TEMPLATE": template,
            "FAKE_RUN_EXIT": str(run_exit),
            "FAKE_RUN_SLEEP": str(run_sleep),
        }

    def run(self, *args: str, **fake: Any) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = self.env(**fake)
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
# `namespace|name|release|ready replicas` of each Deployment found, as the plugin's jsonpath
# prints them: one with a ready pod, and the same with none (an outage, or scaled to 0).
ONE = "jangar|dedupe-orchestration-dedupe-admission|dedupe|1\\n"
NONE_READY = "jangar|dedupe-orchestration-dedupe-admission|dedupe|\\n"


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
    out = plugin.run("stats", found="", found_all="agents-system|dedupe-orchestration-dedupe-admission|dedupe|2\\n", retention="7")
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

    out = plugin.run("stats", found="", found_all="a|dedupe-a-admission|dedupe-a|1\\nb|dedupe-b-admission|dedupe-b|1\\n")
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
    assert PLUGIN.stat().st_mode & stat.S_IXUSR, "chmod +x claims/kubectl-dedupe"
    assert PLUGIN.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(PLUGIN)], check=True)


# --- no ready webhook pod: a one-off pod from the Deployment's template ---------------------

def template_output(deployment: dict[str, Any]) -> str:
    """What the plugin's jsonpath prints for the Deployment: its pod template's parts, one per
    line, objects and lists as one-line JSON (kubectl's jsonpath), nothing when absent."""
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "admission")

    def show(value: Any) -> str:
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    parts = [
        spec.get("serviceAccountName"), container.get("image"), container.get("imagePullPolicy"),
        container.get("env"), container.get("envFrom"), container.get("volumeMounts"),
        container.get("securityContext"), container.get("resources"), spec.get("volumes"),
        spec.get("securityContext"), spec.get("imagePullSecrets"), spec.get("nodeSelector"),
        spec.get("tolerations"),
    ]  # fmt: skip
    return "".join(show(p) + "\n" for p in parts)


@pytest.fixture
def deployment(chart: helm.Chart) -> dict[str, Any]:
    # With a database CA, so the template has a volume and a mount to carry over.
    deployment = render(chart, {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}}).one("Deployment")
    assert deployment["spec"]["template"]["spec"]["volumes"], "a volume to carry over"
    return deployment


def one_off_calls(plugin: Plugin) -> tuple[list[str], list[str], list[str]]:
    """The template read, the `run`, and the `delete` of a one-off-pod invocation."""
    calls = plugin.calls()
    reads = [c for c in calls if "deployment" in c and "get" in c]
    runs = [c for c in calls if "run" in c]
    deletes = [c for c in calls if "delete" in c]
    assert len(reads) == 1 and len(runs) == 1 and len(deletes) == 1, calls
    assert not any("exec" in c for c in calls), calls
    return reads[0], runs[0], deletes[0]


def test_with_no_ready_pod_it_runs_a_one_off_pod_from_the_template_and_deletes_it(
    plugin: Plugin, deployment: dict[str, Any]
) -> None:
    out = plugin.run(
        "-n", "jangar", "get", "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11", "-o", "json",
        found=NONE_READY, retention="30", template=template_output(deployment),
    )  # fmt: skip
    assert out.returncode == 0, out
    # The pod's output comes through; what the plugin does is said on stderr.
    assert out.stdout == "run ran\n", out
    read, run, delete = one_off_calls(plugin)
    assert read[:5] == ["--namespace", "jangar", "get", "deployment", "dedupe-orchestration-dedupe-admission"]
    pod = run[run.index("run") + 1]
    assert pod.startswith("dedupe-claims-") and len(pod) <= 63, pod
    assert out.stderr.startswith(
        f"kubectl-dedupe: no ready webhook pod in jangar; running dedupe-claims in a one-off pod {pod} (deleted afterwards)\n"
    ), out.stderr
    assert "from the pod's stderr" in out.stderr
    template = deployment["spec"]["template"]["spec"]
    container = next(c for c in template["containers"] if c["name"] == "admission")
    assert run[:2] == ["--namespace", "jangar"]
    opts = run[run.index(pod) + 1 :]
    assert opts[:6] == ["--image", container["image"], "--restart=Never", "--rm", "--attach", "--quiet"], opts
    overrides = json.loads(opts[opts.index("--overrides") + 1])
    spec = overrides["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 0
    assert spec["serviceAccountName"] == template["serviceAccountName"]
    assert spec.get("volumes") == template.get("volumes")
    assert spec.get("securityContext") == template.get("securityContext")
    [c] = spec["containers"]
    assert c["name"] == pod, "named as kubectl run names the container it attaches to"
    assert c["image"] == container["image"]
    assert c["command"] == ["/usr/local/bin/dedupe-claims"]
    assert c["args"] == ["--retention-days", "30", "get", "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11", "-o", "json"]
    # The same DATABASE_URL Secret (and everything else of the container's environment).
    assert c["env"] == container["env"] and any(e["name"] == "DATABASE_URL" and "valueFrom" in e for e in c["env"])
    for key in ("envFrom", "volumeMounts", "securityContext", "resources"):
        assert c.get(key) == container.get(key), key
    # Not the webhook's labels: no Service, PDB or ReplicaSet takes the pod for a webhook pod.
    labels = overrides["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "dedupe-claims"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= labels.items()
    # Deleted afterwards, the same pod.
    assert delete == ["--namespace", "jangar", "delete", "pod", pod, "--ignore-not-found", "--wait=false"]


def test_the_one_off_pods_exit_code_comes_back_and_it_is_deleted_on_failure(
    plugin: Plugin, deployment: dict[str, Any]
) -> None:
    for code in (1, 2, 3, 4):
        out = plugin.run("-n", "jangar", "get", "d1", found=NONE_READY, retention="7", template=template_output(deployment), run_exit=code)
        assert out.returncode == code, out
        _, run, delete = one_off_calls(plugin)
        assert delete[delete.index("pod") + 1] == run[run.index("run") + 1]


def test_arguments_reach_the_one_off_pod_unsplit_and_unexpanded(plugin: Plugin, deployment: dict[str, Any]) -> None:
    tricky = ['a b', 'quote"and\\backslash', "$(touch /tmp/pwned)", "tab\there", "two\nlines", ""]
    out = plugin.run("-n", "jangar", "release", *tricky, found=NONE_READY, retention="7", template=template_output(deployment))
    assert out.returncode == 0, out
    _, run, _ = one_off_calls(plugin)
    overrides = json.loads(run[run.index("--overrides") + 1])
    assert overrides["spec"]["containers"][0]["args"] == ["--retention-days", "7", "release", *tricky]


def test_ctrl_c_deletes_the_one_off_pod(plugin: Plugin, deployment: dict[str, Any]) -> None:
    plugin.log.write_text("")
    env = plugin.env(found=NONE_READY, retention="7", template=template_output(deployment), run_sleep=30)
    proc = subprocess.Popen(
        ["sh", str(PLUGIN), "-n", "jangar", "stats"], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not any("run" in c for c in plugin.calls()):
        assert time.monotonic() < deadline, "the one-off pod was never started"
        time.sleep(0.05)
    # As a terminal's Ctrl-C: SIGINT to the whole foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    _, run, delete = one_off_calls(plugin)
    assert delete[delete.index("pod") + 1] == run[run.index("run") + 1]


def test_a_ready_pod_is_exec_ed_into_with_no_template_read_or_pod_made(plugin: Plugin) -> None:
    for ready in ("1", "3"):
        out = plugin.run("-n", "jangar", "stats", found=f"jangar|dedupe-orchestration-dedupe-admission|dedupe|{ready}\\n", retention="7")
        assert out.returncode == 0 and out.stderr == "", out
        calls = plugin.calls()
        assert [c[2] for c in calls] == ["get", "get", "exec"], calls


def test_the_one_off_pod_against_a_real_api_server_and_kubectl(chart: helm.Chart) -> None:
    """The real kubectl and a real kube-apiserver (no kubelet: the pod stays Pending): the pod
    the plugin asks for is accepted as built from the chart's Deployment, and Ctrl-C deletes it."""
    directory = os.environ.get("DEDUPE_TEST_KUBE_DIR")
    if not directory:
        if os.environ.get("KUBEBUILDER_ASSETS"):
            pytest.fail("KUBEBUILDER_ASSETS is set but DEDUPE_TEST_KUBE_DIR is not: run under with-kube (make chart-test)")
        pytest.skip("real-API-server plugin test: KUBEBUILDER_ASSETS is not set")
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl on PATH")
    kubeconfig = str(Path(directory) / "admin.kubeconfig")

    def kc(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([kubectl, "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        return out.stdout

    ns = f"plugin-{os.getpid()}-{int(time.time())}"
    kc("create", "namespace", ns)
    try:
        deployment = render(chart, {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}}).one("Deployment")
        deployment["metadata"]["namespace"] = ns
        template = deployment["spec"]["template"]["spec"]
        kc("-n", ns, "create", "serviceaccount", template["serviceAccountName"])
        kc("-n", ns, "apply", "-f", "-", stdin=json.dumps(deployment))
        proc = subprocess.Popen(
            ["sh", str(PLUGIN), "--kubeconfig", kubeconfig, "-n", ns, "get", "d-1", "-o", "wide"],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        selector = "app.kubernetes.io/component=dedupe-claims"
        deadline = time.monotonic() + 30
        pods: list[dict[str, Any]] = []
        while not pods:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate(timeout=5)
            time.sleep(0.2)
            pods = json.loads(kc("-n", ns, "get", "pods", "-l", selector, "-o", "json"))["items"]
        [pod] = pods
        container = next(c for c in template["containers"] if c["name"] == "admission")
        [c] = pod["spec"]["containers"]
        assert c["image"] == container["image"]
        assert c["command"] == ["/usr/local/bin/dedupe-claims"] and c["args"] == ["get", "d-1", "-o", "wide"]
        assert c["env"] == container["env"]
        assert {m["name"] for m in container.get("volumeMounts", [])} <= {m["name"] for m in c["volumeMounts"]}
        assert pod["spec"]["serviceAccountName"] == template["serviceAccountName"]
        assert pod["spec"]["restartPolicy"] == "Never"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert f"running dedupe-claims in a one-off pod {pod['metadata']['name']}" in err
        deadline = time.monotonic() + 30
        while json.loads(kc("-n", ns, "get", "pods", "-l", selector, "-o", "json"))["items"]:
            assert time.monotonic() < deadline, "the one-off pod was not deleted"
            time.sleep(0.2)
    finally:
        subprocess.run([kubectl, "--kubeconfig", kubeconfig, "delete", "namespace", ns, "--wait=false"], capture_output=True, timeout=60)
