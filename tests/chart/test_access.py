"""Who the webhook checks and who may call it: the namespace selection and the RBAC that follows
it, the reconciler toggle, mTLS from the API server (admission.tls.clientCA, exercised against
the real binary over TLS), and the NetworkPolicy's sources for the webhook port."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

import helm_python as helm
import pytest

from conftest import NAMESPACE, Rendered, bin_dir, env_of, render

GROUP = "orchestration.proompteng.ai"
READ_RULES = [{"apiGroups": [GROUP], "resources": ["orchestrationruns"], "verbs": ["get", "list", "watch"]}]
RECONCILE_ENV = "JANGAR_ORCHESTRATION_DEDUPE_RECONCILE"
NAMESPACES_ENV = "JANGAR_ORCHESTRATION_DEDUPE_NAMESPACES"
CLIENT_CA_ENV = "JANGAR_ORCHESTRATION_DEDUPE_TLS_CLIENT_CA"
CLIENT_CA_DIR = "/etc/orchestration-dedupe/client-ca"
CLIENT_CA_FILE = f"{CLIENT_CA_DIR}/ca.crt"
# Some source for the webhook port, where a test is about something else.
SOURCES = {"apiServer": {"cidrs": ["172.16.0.0/28"]}}


def webhook(out: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the webhook."""
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def hook_of(out: Rendered) -> dict[str, Any]:
    (hook,) = out.one("ValidatingWebhookConfiguration")["webhooks"]
    return hook


def selects(selector: dict[str, Any], namespace: str) -> bool:
    """Evaluates a namespaceSelector against a namespace's automatic kubernetes.io/metadata.name
    label, as the API server does (only the operators the chart may render)."""
    labels = {"kubernetes.io/metadata.name": namespace}
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        op = expr["operator"]
        if op == "In" and not (present and labels[expr["key"]] in expr["values"]):
            return False
        if op == "NotIn" and present and labels[expr["key"]] in expr["values"]:
            return False
        if op not in ("In", "NotIn"):
            pytest.fail(f"selects() does not know operator {op}")
    return True


# --- namespaces and RBAC -----------------------------------------------------------------


def test_default_selector_checks_the_release_namespace_where_the_runs_live(chart: helm.Chart) -> None:
    """The seed's layout: runs, controllers and jangar-db-app all in `agents`, the chart too."""
    out = render(chart, namespace="agents")
    selector = hook_of(out)["namespaceSelector"]
    for ns in ("agents", "ci", "kube-system", "default"):
        assert selects(selector, ns), f"the default namespaceSelector {selector} skips {ns}"
    # Only OrchestrationRuns are intercepted, so the webhook never gates its own pods.
    (rule,) = hook_of(out)["rules"]
    assert rule["apiGroups"] == [GROUP] and rule["resources"] == ["orchestrationruns"]
    assert "agents" in out.notes and "every namespace" in out.notes


def test_listed_namespaces_are_the_only_ones_checked(chart: helm.Chart) -> None:
    out = render(chart, {"admission": {"namespaces": ["agents", "ci"]}}, namespace="agents")
    selector = hook_of(out)["namespaceSelector"]
    assert selects(selector, "agents") and selects(selector, "ci")
    assert not selects(selector, "default") and not selects(selector, "kube-system")
    assert "agents, ci only" in out.notes


def test_all_namespaces_get_a_cluster_role_to_read_runs(chart: helm.Chart) -> None:
    out = render(chart)
    assert not out.of_kind("Role") and not out.of_kind("RoleBinding")
    role = out.one("ClusterRole")
    assert role["rules"] == READ_RULES
    binding = out.one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    pod, _ = webhook(out)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]
    assert "ClusterRole" in out.notes


def test_listed_namespaces_get_a_role_each_and_no_cluster_role(chart: helm.Chart) -> None:
    namespaces = ["agents", "ci", NAMESPACE]
    out = render(chart, {"admission": {"namespaces": namespaces}})
    assert not out.of_kind("ClusterRole") and not out.of_kind("ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in out.of_kind("Role")}
    bindings = {b["metadata"]["namespace"]: b for b in out.of_kind("RoleBinding")}
    assert sorted(roles) == sorted(bindings) == sorted(namespaces)
    pod, _ = webhook(out)
    for ns in namespaces:
        assert roles[ns]["rules"] == READ_RULES, ns
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[ns]["metadata"]["name"]}
        # The subject is the webhook's ServiceAccount in the release namespace, wherever the Role is.
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]


def test_the_reconciler_watches_the_namespaces_the_rbac_covers(chart: helm.Chart) -> None:
    """A cluster-wide watch with only Roles would be forbidden: the binary is told the list."""
    _, everywhere = webhook(render(chart))
    assert NAMESPACES_ENV not in env_of(everywhere)
    _, scoped = webhook(render(chart, {"admission": {"namespaces": ["agents", "ci"]}}))
    assert env_of(scoped)[NAMESPACES_ENV]["value"] == "agents,ci"


def test_no_rbac_without_the_webhook(chart: helm.Chart) -> None:
    out = render(chart, {"admission": {"enabled": False, "namespaces": ["agents"]}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(out.kinds())


# --- the reconciler toggle -----------------------------------------------------------------


@pytest.mark.parametrize(("enabled", "flag"), [(None, "on"), (True, "on"), (False, "off")], ids=["default", "on", "off"])
def test_reconcile_toggle(chart: helm.Chart, enabled: bool | None, flag: str) -> None:
    values = {} if enabled is None else {"admission": {"reconcile": {"enabled": enabled}}}
    out = render(chart, values)
    _, container = webhook(out)
    assert env_of(container)[RECONCILE_ENV] == {"name": RECONCILE_ENV, "value": flag}
    assert ("reconciler is off" in out.notes) == (flag == "off")
    # Turning it off does not take the webhook's read access away: the take-over lookup GETs.
    assert out.one("ClusterRole")["rules"] == READ_RULES


def test_reconcile_toggle_is_a_boolean(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="reconcile"):
        render(chart, {"admission": {"reconcile": {"enabled": "off"}}})


# --- mTLS ------------------------------------------------------------------------------------


def client_ca_volume(pod: dict[str, Any]) -> dict[str, Any] | None:
    found = [v for v in pod.get("volumes", []) if v["name"] == "client-ca"]
    assert len(found) <= 1
    return found[0] if found else None


def test_no_client_ca_by_default(chart: helm.Chart) -> None:
    assert chart.values["admission"]["tls"]["clientCA"] == {"name": "", "kind": "Secret", "key": "ca.crt"}
    out = render(chart)
    pod, container = webhook(out)
    assert client_ca_volume(pod) is None
    assert CLIENT_CA_ENV not in env_of(container)
    assert all(m["name"] != "client-ca" for m in container["volumeMounts"])
    assert "No client certificate is required" in out.notes


@pytest.mark.parametrize(
    ("ref", "source", "name_field"),
    [
        ({"name": "apiserver-client-ca"}, "secret", "secretName"),
        ({"name": "apiserver-client-ca", "kind": "Secret", "key": "bundle.pem"}, "secret", "secretName"),
        ({"name": "apiserver-webhook-client-ca", "kind": "ConfigMap"}, "configMap", "name"),
        ({"name": "trust-bundle", "kind": "ConfigMap", "key": "trust-bundle.pem"}, "configMap", "name"),
    ],
    ids=["secret-default-key", "secret-custom-key", "configmap", "configmap-custom-key"],
)
def test_client_ca_is_mounted_and_passed(chart: helm.Chart, ref: dict[str, str], source: str, name_field: str) -> None:
    out = render(chart, {"admission": {"tls": {"clientCA": ref}}})
    pod, container = webhook(out)
    volume = client_ca_volume(pod)
    assert volume is not None
    assert set(volume) == {"name", source}, "exactly one source"
    assert volume[source][name_field] == ref["name"]
    # Only the one key, under a fixed file name.
    assert volume[source]["items"] == [{"key": ref.get("key", "ca.crt"), "path": "ca.crt"}]
    assert volume[source].get("optional") is not True, "a missing CA must stop the pod, not silently drop mTLS"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "client-ca"]
    assert mount == {"name": "client-ca", "mountPath": CLIENT_CA_DIR, "readOnly": True}
    assert "subPath" not in mount, "a subPath mount never sees updates"
    assert env_of(container)[CLIENT_CA_ENV] == {"name": CLIENT_CA_ENV, "value": CLIENT_CA_FILE}
    assert CLIENT_CA_FILE == f"{mount['mountPath']}/{volume[source]['items'][0]['path']}"
    # The serving certificate is still mounted beside it.
    assert {"tls", "client-ca"} <= {v["name"] for v in pod["volumes"]}
    assert f"{ref.get('kind', 'Secret')} {ref['name']}" in out.notes


@pytest.mark.parametrize(
    ("ref", "where"),
    [
        ({"name": "ca", "kind": "Vault"}, "/admission/tls/clientCA/kind"),
        ({"name": "Not_A_Name"}, "/admission/tls/clientCA/name"),
        ({"name": "ca", "key": "dir/ca.crt"}, "/admission/tls/clientCA/key"),
        ({"name": "ca", "secretName": "ca"}, "secretName"),
    ],
    ids=["unknown-kind", "bad-name", "key-with-slash", "unknown-field"],
)
def test_client_ca_schema(chart: helm.Chart, ref: dict[str, str], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(chart, {"admission": {"tls": {"clientCA": ref}}})
    assert where in str(err.value)


# The real binary, configured from the rendered environment, over real TLS.


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a serving certificate for 127.0.0.1 and a client certificate, from certs-dev."""
    out = tmp_path_factory.mktemp("pki")
    tool = bin_dir() / "certs-dev"
    if not tool.is_file():
        pytest.fail(f"{tool} not found: build the workspace first (make chart-test does)")
    subprocess.run(
        [str(tool), "--out", str(out), "--dns", "localhost", "--ip", "127.0.0.1", "--client", "kube-apiserver"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name in ("ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"):
        assert (out / name).is_file(), name
    return out


class Webhook:
    """dedupe-admission started with the environment the chart renders, on loopback ports."""

    def __init__(self, container: dict[str, Any], pki: Path, files: dict[str, Path]):
        env = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
        # The chart's mount paths do not exist here: each rendered path is swapped for the
        # local file that the same volume would put there (checked by the caller).
        for name, value in env.items():
            if value in files:
                env[name] = str(files[value])
        env.update(
            {
                # Nobody listens there; with migrations skipped the webhook serves regardless.
                "DATABASE_URL": "postgres://dedupe@127.0.0.1:1/dedupe?connect_timeout=1",
                "JANGAR_ORCHESTRATION_DEDUPE_MIGRATIONS": "skip",
                # No API server here: neither the lookup nor the reconciler's watch.
                "JANGAR_ORCHESTRATION_DEDUPE_KUBE_LOOKUP": "off",
                RECONCILE_ENV: "off",
                "JANGAR_ORCHESTRATION_DEDUPE_TLS_CERT": str(pki / "tls.crt"),
                "JANGAR_ORCHESTRATION_DEDUPE_TLS_KEY": str(pki / "tls.key"),
                "JANGAR_ORCHESTRATION_DEDUPE_LOG_FORMAT": "json",
            }
        )
        path = bin_dir() / "dedupe-admission"
        if not path.is_file():
            pytest.fail(f"{path} not found: build it first (make chart-test does)")
        self.proc = subprocess.Popen(
            [str(path), "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port = self._wait_for_listen()

    def _wait_for_listen(self) -> int:
        """The port from the "dedupe-admission serving" log line (bound to port 0). A thread
        reads the output: select() on a buffered pipe misses lines already buffered."""
        assert self.proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

        def pump(stream: IO[str]) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + 60  # a cold start on a loaded 2-core machine; normally < 1 s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("message") == "dedupe-admission serving":
                return int(str(record["listen"]).rsplit(":", 1)[1])
        self.stop()
        pytest.fail("dedupe-admission did not start serving:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_webhook(pki: Path) -> Iterator[Any]:
    started: list[Webhook] = []

    def start(container: dict[str, Any], files: dict[str, Path]) -> Webhook:
        w = Webhook(container, pki, files)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def exchange(port: int, pki: Path, *, client_cert: bool) -> str:
    """One HTTP/1.1 request over TLS; returns the status line, or raises what the TLS layer
    reported. With TLS 1.3 a missing client certificate is rejected after the client's side of
    the handshake, so the refusal shows on the first read, not in do_handshake."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = tls.recv(4096)
    if not data:
        raise ConnectionResetError("closed without a response")
    return data.split(b"\r\n", 1)[0].decode()


def local_files_for(pod: dict[str, Any], container: dict[str, Any], pki: Path) -> dict[str, Path]:
    """Rendered file path -> local file, for the client-CA volume: the mount path plus the
    item's path, as the kubelet would lay it out."""
    volume = client_ca_volume(pod)
    if volume is None:
        return {}
    source = volume.get("secret") or volume["configMap"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "client-ca"]
    (item,) = source["items"]
    return {f"{mount['mountPath']}/{item['path']}": pki / "ca.crt"}


@pytest.mark.parametrize("kind", ["Secret", "ConfigMap"])
def test_client_ca_from_the_values_makes_the_binary_require_a_client_certificate(
    chart: helm.Chart, pki: Path, start_webhook: Any, kind: str
) -> None:
    pod, container = webhook(render(chart, {"admission": {"tls": {"clientCA": {"name": "apiserver-client-ca", "kind": kind}}}}))
    files = local_files_for(pod, container, pki)
    assert set(files) == {env_of(container)[CLIENT_CA_ENV]["value"]}, "the variable names the mounted file"
    server = start_webhook(container, files)
    # A client certificate from that CA (the API server's, once configured): served.
    assert exchange(server.port, pki, client_cert=True).startswith("HTTP/1.1 ")
    # None (any pod that merely reaches the port): refused by TLS, no HTTP answer.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(server.port, pki, client_cert=False)


def test_without_client_ca_any_tls_client_is_served(chart: helm.Chart, pki: Path, start_webhook: Any) -> None:
    """The control for the test above: the default values ask for no client certificate."""
    pod, container = webhook(render(chart))
    server = start_webhook(container, local_files_for(pod, container, pki))
    assert exchange(server.port, pki, client_cert=False).startswith("HTTP/1.1 ")


# --- NetworkPolicy sources -----------------------------------------------------------------


def webhook_ingress(out: Rendered) -> dict[str, Any]:
    policy = out.one("NetworkPolicy", "-admission")
    (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "https", "protocol": "TCP"}]]
    return rule


def test_api_server_cidrs_are_the_webhook_ports_sources(chart: helm.Chart) -> None:
    out = render(chart, {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.16.0.0/28", "fd00:10::/64"]}}})
    rule = webhook_ingress(out)
    assert rule["from"] == [{"ipBlock": {"cidr": "172.16.0.0/28"}}, {"ipBlock": {"cidr": "fd00:10::/64"}}]
    # Egress to the API server is its own list and unchanged.
    egress = out.one("NetworkPolicy", "-admission")["spec"]["egress"]
    assert any({p["port"] for p in r["ports"]} == {443, 6443} and "to" not in r for r in egress)


def test_cidrs_and_peers_combine(chart: helm.Chart) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "konnectivity-agent"}}}
    out = render(chart, {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.0/28"]}, "webhookFrom": [peer]}})
    assert webhook_ingress(out)["from"] == [{"ipBlock": {"cidr": "10.0.0.0/28"}}, peer]
    only_peers = render(chart, {"networkPolicy": {"enabled": True, "webhookFrom": [peer]}})
    assert webhook_ingress(only_peers)["from"] == [peer]


@pytest.mark.parametrize(
    "network_policy",
    [{"enabled": True}, {"enabled": True, "apiServer": {"cidrs": []}, "webhookFrom": []}, {"enabled": True, "webhookAllowAllSources": False}],
    ids=["unset", "empty-lists", "allow-all-false"],
)
def test_no_sources_fails_the_render_instead_of_admitting_everyone(chart: helm.Chart, network_policy: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"networkPolicy\.apiServer\.cidrs.*webhookAllowAllSources"):
        render(chart, {"networkPolicy": network_policy})


def test_allow_all_sources_must_be_asked_for(chart: helm.Chart) -> None:
    out = render(chart, {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True}})
    rule = webhook_ingress(out)
    assert "from" not in rule, "an ingress rule without from admits every source"
    # And it is not combined with a list it would make meaningless.
    with pytest.raises(helm.HelmRenderError, match="webhookAllowAllSources"):
        render(chart, {"networkPolicy": {"enabled": True, "webhookAllowAllSources": True, **SOURCES}})


def test_no_rendered_webhook_rule_admits_everyone_unless_asked(chart: helm.Chart) -> None:
    """Across the ways to set sources, a rule on the webhook port always has a non-empty from."""
    for np in (
        {"enabled": True, **SOURCES},
        {"enabled": True, "webhookFrom": [{"podSelector": {}}]},
        {"enabled": True, **SOURCES, "metricsFrom": [{"namespaceSelector": {}}]},
    ):
        rule = webhook_ingress(render(chart, {"networkPolicy": np, "serviceMonitor": {"enabled": True}}))
        assert rule.get("from"), np


def test_metrics_port_follows_its_own_values(chart: helm.Chart) -> None:
    def metrics_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
        policy = render(chart, values).one("NetworkPolicy", "-admission")
        return [r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "metrics", "protocol": "TCP"}]]

    base = {"enabled": True, **SOURCES}
    assert metrics_rules({"networkPolicy": base}) == []
    # Scraped by a ServiceMonitor, no peers given: the metrics port is open (read-only data),
    # independently of the webhook port's sources.
    (open_rule,) = metrics_rules({"networkPolicy": base, "serviceMonitor": {"enabled": True}})
    assert "from" not in open_rule
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    (scoped,) = metrics_rules({"networkPolicy": {**base, "metricsFrom": [prometheus]}})
    assert scoped["from"] == [prometheus]


def test_pruner_only_with_the_policy_needs_no_webhook_sources(chart: helm.Chart) -> None:
    out = render(chart, {"admission": {"enabled": False}, "networkPolicy": {"enabled": True}})
    assert [p["metadata"]["name"] for p in out.of_kind("NetworkPolicy")] == [out.one("CronJob")["metadata"]["name"]]


@pytest.mark.parametrize("cidr", ["10.0.0.0", "10.0.0.0/33", "300.0.0.0/8", "fd00::/129", "any"], ids=lambda c: c)
def test_cidrs_are_checked_by_the_schema(chart: helm.Chart, cidr: str) -> None:
    with pytest.raises(helm.HelmValuesError, match="/networkPolicy/apiServer/cidrs"):
        render(chart, {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": [cidr]}}})
