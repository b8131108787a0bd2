"""The three ways the webhook gets its serving certificate (admission.tls.mode)."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from conftest import NAMESPACE, FakeApiServer, Rendered, deep_merge, env_of, render

TLS_DIR = "/etc/orchestration-dedupe/tls"
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}


def webhook(out: Rendered) -> dict[str, Any]:
    (hook,) = out.one("ValidatingWebhookConfiguration")["webhooks"]
    return hook


def mounted_secret(out: Rendered) -> str:
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == TLS_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    assert {i["key"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key"}
    return volume["secret"]["secretName"]


def keys_named(key: str, node: Any) -> list[Any]:
    """Every value stored under `key`, anywhere in a parsed document tree."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in keys_named(key, v)]
    if isinstance(node, list):
        return [x for v in node for x in keys_named(key, v)]
    return []


def service_dns_names(out: Rendered) -> list[str]:
    svc = out.one("Service")["metadata"]["name"]
    return [svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"]


def test_cert_manager_mode_is_the_default_and_renders_no_ca_bundle(chart: helm.Chart) -> None:
    out = render(chart)
    assert out.kinds()["Issuer"] == 2 and out.kinds()["Certificate"] == 2
    issuers = {o["metadata"]["name"]: o["spec"] for o in out.of_kind("Issuer")}
    certs = {o["metadata"]["name"]: o["spec"] for o in out.of_kind("Certificate")}

    # self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate
    (self_signed,) = [n for n, s in issuers.items() if s == {"selfSigned": {}}]
    (ca_cert_name,) = [n for n, s in certs.items() if s.get("isCA")]
    ca_cert = certs[ca_cert_name]
    assert ca_cert["issuerRef"] == {"name": self_signed, "kind": "Issuer", "group": "cert-manager.io"}
    (ca_issuer,) = [n for n, s in issuers.items() if "ca" in s]
    assert issuers[ca_issuer]["ca"]["secretName"] == ca_cert["secretName"]
    (serving_name,) = [n for n, s in certs.items() if not s.get("isCA")]
    serving = certs[serving_name]
    assert serving["issuerRef"] == {"name": ca_issuer, "kind": "Issuer", "group": "cert-manager.io"}
    assert serving["dnsNames"] == service_dns_names(out)
    assert "server auth" in serving["usages"]
    assert serving["privateKey"]["rotationPolicy"] == "Always"

    # The webhook mounts what cert-manager writes, and cainjector fills the caBundle.
    assert mounted_secret(out) == serving["secretName"]
    vwc = out.one("ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{serving_name}"
    assert "caBundle" not in webhook(out)["clientConfig"]
    assert not keys_named("caBundle", out.objects), "a rendered caBundle would fight the injector under server-side apply"
    assert not out.of_kind("Secret")


def test_cert_manager_mode_with_an_existing_issuer(chart: helm.Chart) -> None:
    issuer = {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    out = render(chart, {"admission": {"tls": {"certManager": {"issuerRef": issuer}}}})
    assert not out.of_kind("Issuer")
    serving = out.one("Certificate")
    assert serving["spec"]["issuerRef"] == issuer
    annotation = out.one("ValidatingWebhookConfiguration")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{NAMESPACE}/{serving['metadata']['name']}"


def test_secret_mode_uses_the_existing_secret_and_ca_bundle(chart: helm.Chart) -> None:
    ca_bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    out = render(chart, {"admission": {"tls": {"mode": "secret", "secret": {"name": "webhook-tls", "caBundle": ca_bundle}}}})
    assert not CERT_MANAGER_KINDS & set(out.kinds())
    assert not out.of_kind("Secret"), "the Secret exists already; the chart must not own it"
    assert mounted_secret(out) == "webhook-tls"
    assert webhook(out)["clientConfig"]["caBundle"] == ca_bundle
    assert "cert-manager.io/inject-ca-from" not in out.one("ValidatingWebhookConfiguration")["metadata"]["annotations"]


@pytest.mark.parametrize(
    "secret",
    [{"name": "webhook-tls"}, {"caBundle": "Q0E="}, {"name": "", "caBundle": "Q0E="}],
    ids=["no-ca-bundle", "no-name", "empty-name"],
)
def test_secret_mode_requires_name_and_ca_bundle(chart: helm.Chart, secret: dict[str, str]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"admission": {"tls": {"mode": "secret", "secret": secret}}})


def _handshake(crt: bytes, key: bytes, ca: bytes, server_name: str, tmp: Path) -> None:
    """A real TLS handshake over loopback: the certificate chains to the CA and names server_name."""
    (tmp / "tls.crt").write_bytes(crt)
    (tmp / "tls.key").write_bytes(key)
    (tmp / "ca.crt").write_bytes(ca)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as e:  # the client's failure is the one reported
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"x")
    finally:
        thread.join(10)
        listener.close()


def test_helm_mode_generates_a_ca_and_a_serving_certificate(chart: helm.Chart, tmp_path: Path) -> None:
    out = render(chart, {"admission": {"tls": {"mode": "helm"}}})
    assert not CERT_MANAGER_KINDS & set(out.kinds())
    secret = out.one("Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert mounted_secret(out) == secret["metadata"]["name"]
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    assert webhook(out)["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert "cert-manager.io/inject-ca-from" not in out.one("ValidatingWebhookConfiguration")["metadata"]["annotations"]
    # The API server dials <service>.<namespace>.svc; the certificate must chain and match.
    for name in service_dns_names(out):
        _handshake(data["tls.crt"], data["tls.key"], data["ca.crt"], name, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(data["tls.crt"], data["tls.key"], data["ca.crt"], "elsewhere.example", tmp_path)


def test_helm_mode_reuses_the_secret_found_through_lookup(chart: helm.Chart) -> None:
    secret_name = render(chart, {"admission": {"tls": {"mode": "helm"}}}).one("Secret")["metadata"]["name"]
    existing = {"tls.crt": "Q1JU", "tls.key": "S0VZ", "ca.crt": "Q0E="}
    secrets = {(NAMESPACE, secret_name): {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": secret_name, "namespace": NAMESPACE}, "data": existing}}
    with FakeApiServer(secrets) as api:
        out = api.render(chart, {"admission": {"tls": {"mode": "helm"}}})
    assert any(p.startswith(f"/api/v1/namespaces/{NAMESPACE}/secrets/{secret_name}") for p in api.requests), api.requests
    assert out.one("Secret")["data"] == existing
    assert webhook(out)["clientConfig"]["caBundle"] == existing["ca.crt"]


def test_helm_mode_generates_when_lookup_finds_nothing_or_an_incomplete_secret(chart: helm.Chart) -> None:
    secret_name = render(chart, {"admission": {"tls": {"mode": "helm"}}}).one("Secret")["metadata"]["name"]
    incomplete = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name, "namespace": NAMESPACE}, "data": {"tls.crt": "Q1JU"}}
    for secrets in ({}, {(NAMESPACE, secret_name): incomplete}):
        with FakeApiServer(secrets) as api:
            out = api.render(chart, {"admission": {"tls": {"mode": "helm"}}})
        assert api.requests, "lookup did not reach the fake API server"
        data = out.one("Secret")["data"]
        assert set(data) == {"tls.crt", "tls.key", "ca.crt"} and data["tls.crt"] != "Q1JU"


def test_helm_mode_regenerates_under_helm_template(chart: helm.Chart) -> None:
    """Documented caveat: without a cluster (helm template, Argo CD) every render is new."""
    values = {"admission": {"tls": {"mode": "helm"}}}
    assert render(chart, values).one("Secret")["data"] != render(chart, values).one("Secret")["data"]


def test_cert_manager_and_secret_modes_never_call_lookup(chart: helm.Chart) -> None:
    for values in ({}, {"admission": {"tls": {"mode": "secret", "secret": {"name": "t", "caBundle": "Q0E="}}}}):
        with FakeApiServer({}) as api:
            api.render(chart, values)
        assert api.requests == []


# --- tls.mode self: the webhook makes and rotates its own certificate -----------------------

SELF = {"admission": {"tls": {"mode": "self"}}}


def _self_env(out: Rendered) -> dict[str, str]:
    (container,) = out.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return {k: v.get("value") for k, v in env_of(container).items() if k.startswith("JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_")}


def test_self_mode_renders_no_cert_manager_no_secret_and_no_ca_bundle(chart: helm.Chart) -> None:
    out = render(chart, SELF)
    assert not CERT_MANAGER_KINDS & set(out.kinds())
    assert not out.of_kind("Secret"), "the webhook creates the Secret; a rendered one would be regenerated by GitOps"
    assert not keys_named("caBundle", out.objects), "the webhook injects the caBundle"
    assert "cert-manager.io/inject-ca-from" not in out.one("ValidatingWebhookConfiguration")["metadata"]["annotations"]
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == TLS_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is False, "the webhook writes the Secret's certificate there"
    assert volume["emptyDir"]["medium"] == "Memory"
    assert "secret" not in volume


def test_self_mode_passes_the_flags(chart: helm.Chart) -> None:
    out = render(chart, SELF)
    name = out.one("ValidatingWebhookConfiguration")["metadata"]["name"]
    env = _self_env(out)
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_SECRET"] == f"{NAMESPACE}/{RELEASE_FULLNAME(out)}-tls"
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_VALIDATING_WEBHOOKS"] == name
    assert "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_MUTATING_WEBHOOKS" not in env
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_DNS"].split(",") == service_dns_names(out)
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CA_VALIDITY_SECONDS"] == str(1095 * 86400)
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CERT_VALIDITY_SECONDS"] == str(90 * 86400)
    assert env["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CHECK_SECONDS"] == "60"
    # The mutating registration, when on, is kept too.
    out = render(chart, deep_merge(SELF, {"admission": {"mutating": {"enabled": True}}}))
    mutating = out.one("MutatingWebhookConfiguration")
    assert "caBundle" not in mutating["webhooks"][0]["clientConfig"]
    assert _self_env(out)["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_MUTATING_WEBHOOKS"] == mutating["metadata"]["name"]
    # Other modes pass none of them.
    assert _self_env(render(chart)) == {}


def RELEASE_FULLNAME(out: Rendered) -> str:  # noqa: N802 - reads like the helper it mirrors
    return out.one("Deployment")["metadata"]["name"].removesuffix("-admission")


def test_self_mode_rbac_is_limited_to_the_secret_and_the_registrations(chart: helm.Chart) -> None:
    out = render(chart, deep_merge(SELF, {"admission": {"mutating": {"enabled": True}}}))
    sa = out.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    secret = _self_env(out)["JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_SECRET"].split("/")[1]
    (role,) = [r for r in out.of_kind("Role") if r["metadata"]["name"].endswith("-self-tls")]
    assert role["metadata"]["namespace"] == NAMESPACE
    by_verbs = {tuple(r["verbs"]): r for r in role["rules"]}
    assert by_verbs[("get", "update")]["resourceNames"] == [secret]
    # RBAC cannot limit create to a name (the authorizer does not know it at create).
    assert "resourceNames" not in by_verbs[("create",)]
    assert all(r["resources"] == ["secrets"] for r in role["rules"])
    (cluster_role,) = [r for r in out.of_kind("ClusterRole") if r["metadata"]["name"].endswith("-self-tls")]
    vwc = out.one("ValidatingWebhookConfiguration")["metadata"]["name"]
    mwc = out.one("MutatingWebhookConfiguration")["metadata"]["name"]
    assert {(r["resources"][0], tuple(r["resourceNames"]), tuple(r["verbs"])) for r in cluster_role["rules"]} == {
        ("validatingwebhookconfigurations", (vwc,), ("get", "patch")),
        ("mutatingwebhookconfigurations", (mwc,), ("get", "patch")),
    }
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        (binding,) = [b for b in out.of_kind(kind) if b["metadata"]["name"].endswith("-self-tls")]
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # Other modes grant none of it.
    assert not [r for r in render(chart).of_kind("Role") if r["metadata"]["name"].endswith("-self-tls")]


def test_self_mode_refuses_a_check_interval_a_certificate_could_expire_within(chart: helm.Chart) -> None:
    with pytest.raises(Exception, match="checkSeconds"):
        render(chart, deep_merge(SELF, {"admission": {"tls": {"self": {"certValidityDays": 1, "checkSeconds": 30000}}}}))
    with pytest.raises(helm.HelmValuesError):
        render(chart, deep_merge(SELF, {"admission": {"tls": {"self": {"checkSeconds": 0}}}}))


def test_self_mode_never_calls_lookup(chart: helm.Chart) -> None:
    with FakeApiServer({}) as api:
        api.render(chart, SELF)
    assert api.requests == []
