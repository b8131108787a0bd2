"""TLS to PostgreSQL: the optional CA bundle (database.tls.caSecretRef) that both binaries
verify the server's certificate against."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import pytest

from conftest import Cli, Rendered, bin_dir, env_of, render

CA_ENV = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA"
CA_DIR = "/etc/orchestration-dedupe/database-ca"
CA_FILE = f"{CA_DIR}/ca.crt"
WITH_CA = {"database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}}}


def workloads(out: Rendered) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """binary -> (pod spec, its one container)."""
    found = {}
    for _, pod in out.pod_specs():
        (container,) = pod["containers"]
        assert not pod.get("initContainers")
        found[PurePosixPath(container["command"][0]).name] = (pod, container)
    return found


def ca_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in pod.get("volumes", []) if v["name"] == "database-ca"]


def test_no_ca_by_default(chart: helm.Chart) -> None:
    """Unset, nothing is mounted and the binaries encrypt without verifying (their default)."""
    assert chart.values["database"]["tls"]["caSecretRef"] == {"name": "", "key": "ca.crt"}
    out = render(chart)
    parts = workloads(out)
    assert set(parts) == {"dedupe-admission", "dedupe-pruner"}
    for binary, (pod, container) in parts.items():
        assert CA_ENV not in env_of(container), binary
        assert not ca_volumes(pod), binary
        assert all(m["name"] != "database-ca" for m in container.get("volumeMounts", [])), binary
    # The pruner pod mounts nothing at all without it.
    pruner_pod, pruner = parts["dedupe-pruner"]
    assert "volumes" not in pruner_pod and "volumeMounts" not in pruner
    assert "without verifying" in out.notes and "database.tls.caSecretRef" in out.notes


@pytest.mark.parametrize(
    ("ref", "key"),
    [({"name": "jangar-ca"}, "ca.crt"), ({"name": "pg-server-ca", "key": "bundle.pem"}, "bundle.pem")],
    ids=["cloudnativepg-default-key", "custom-key"],
)
def test_ca_is_mounted_and_passed_to_both_parts(chart: helm.Chart, ref: dict[str, str], key: str) -> None:
    out = render(chart, {"database": {"tls": {"caSecretRef": ref}}})
    parts = workloads(out)
    assert set(parts) == {"dedupe-admission", "dedupe-pruner"}
    for binary, (pod, container) in parts.items():
        (volume,) = ca_volumes(pod)
        # Only the one key: CloudNativePG's <cluster>-ca Secret also holds the CA's private key.
        assert volume["secret"]["secretName"] == ref["name"], binary
        assert volume["secret"]["items"] == [{"key": key, "path": "ca.crt"}], binary
        assert volume["secret"].get("optional") is not True, "a missing Secret must stop the pod, not silently skip verification"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "database-ca"]
        assert mount == {"name": "database-ca", "mountPath": CA_DIR, "readOnly": True}, binary
        assert "subPath" not in mount, "a subPath mount never sees the Secret's updates"
        assert env_of(container)[CA_ENV] == {"name": CA_ENV, "value": CA_FILE}, binary
        # The variable names the file the volume puts there.
        assert CA_FILE == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    # The webhook keeps its serving certificate next to it.
    pod, container = parts["dedupe-admission"]
    assert {v["name"] for v in pod["volumes"]} == {"tls", "database-ca"}
    assert {m["name"] for m in container["volumeMounts"]} == {"tls", "database-ca"}
    assert f"Secret {ref['name']} (key {key})" in out.notes


@pytest.mark.parametrize("part", ["admission", "pruner"])
def test_each_part_alone_gets_the_ca(chart: helm.Chart, part: str) -> None:
    other = "pruner" if part == "admission" else "admission"
    out = render(chart, {**WITH_CA, other: {"enabled": False}})
    ((pod, container),) = workloads(out).values()
    assert ca_volumes(pod) and env_of(container)[CA_ENV]["value"] == CA_FILE


def test_env_vars_still_win_over_the_derived_path(chart: helm.Chart) -> None:
    """As for every derived variable: env.vars, then the part's env.vars, overlay it."""
    out = render(chart, {**WITH_CA, "pruner": {"env": {"vars": {CA_ENV: "/elsewhere/ca.pem"}}}})
    parts = workloads(out)
    assert env_of(parts["dedupe-pruner"][1])[CA_ENV]["value"] == "/elsewhere/ca.pem"
    assert env_of(parts["dedupe-admission"][1])[CA_ENV]["value"] == CA_FILE


def test_both_binaries_take_the_variable(clis: dict[str, Cli]) -> None:
    """The --help cross-check (test_binaries covers every rendered variable; this one by name)."""
    for binary, cli in clis.items():
        option = cli.by_env().get(CA_ENV)
        assert option is not None, f"{binary} --help lists no {CA_ENV} (its variables: {sorted(cli.by_env())})"
        assert option.flag == "database-ca" and option.default is None, binary


def _run(binary: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = bin_dir() / binary
    if not path.is_file():
        pytest.fail(f"{path} not found: build it first (make chart-test does)")
    return subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=60)


def _rendered_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the chart renders it, with a database nobody listens on
    (connection refused at once) and no waiting on it."""
    env = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
    env["DATABASE_URL"] = "postgres://dedupe@127.0.0.1:1/dedupe?connect_timeout=1"
    env["JANGAR_ORCHESTRATION_DEDUPE_MIGRATIONS"] = "skip"  # the webhook would retry ~15 s
    if PurePosixPath(container["command"][0]).name == "dedupe-pruner":
        env["JANGAR_ORCHESTRATION_DEDUPE_PRUNE_CONNECT_ATTEMPTS"] = "1"
    return env


def test_both_binaries_act_on_the_variable(chart: helm.Chart, tmp_path: Path) -> None:
    """Listed in --help is not enough (both binaries share the flag definition): each must read
    the file the chart points it at. An unreadable bundle is a configuration error (exit 2,
    which the pruner's podFailurePolicy fails the Job on); a readable one gets past it."""
    ca_pem = base64.b64decode(render(chart, {"admission": {"tls": {"mode": "helm"}}}).one("Secret")["data"]["ca.crt"])
    good = tmp_path / "ca.crt"
    good.write_bytes(ca_pem)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    assert not Path(CA_FILE).exists(), f"{CA_FILE} exists on this machine; the test needs it absent"

    failures = []
    for binary, (_, container) in workloads(render(chart, WITH_CA)).items():
        env = _rendered_env(container)
        # As rendered: the chart's path, absent here.
        missing = _run(binary, env)
        output = missing.stdout + missing.stderr
        if missing.returncode != 2 or "--database-ca" not in output or CA_FILE not in output:
            failures.append(f"{binary} with {CA_ENV}={CA_FILE} (absent): exit {missing.returncode}, want 2 naming --database-ca and the path:\n{output.strip()}")
        bad = _run(binary, {**env, CA_ENV: str(not_pem)})
        if bad.returncode != 2 or "--database-ca" not in bad.stdout + bad.stderr:
            failures.append(f"{binary} with a non-PEM bundle: exit {bad.returncode}, want 2 naming --database-ca:\n{(bad.stdout + bad.stderr).strip()}")
        ok = _run(binary, {**env, CA_ENV: str(good)})
        if ok.returncode == 2 or "--database-ca" in ok.stdout + ok.stderr:
            failures.append(f"{binary} rejected a valid CA bundle: exit {ok.returncode}:\n{(ok.stdout + ok.stderr).strip()}")
    assert not failures, "\n\n".join(failures)
