"""The chart passes only flags and environment variables that the binaries accept, with values
they accept. Checked against the real `--help` of target/debug/dedupe-admission and
dedupe-pruner, so the chart and the binaries cannot drift apart."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import helm_python as helm
import pytest

from conftest import REPO, Cli, Option, env_of, render

# Value sets that exercise every flag/env the chart can emit.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-set": {
        "claimScope": "namespace",
        "migrations": "skip",
        "logFormat": "text",
        "retentionDays": 30,
        "admission": {
            "kubeLookup": "off",
            "pendingGraceSeconds": 300,
            "storeTimeoutMs": 1500,
            "port": 8443,
            "metricsPort": 9091,
            "maxConcurrentRequests": 16,
            "groupCommit": {"enabled": False, "maxBatch": 32, "inFlight": 2, "lingerUs": 250},
        },
        "pruner": {"dryRun": True, "batchSize": 1000000, "batchPauseMs": 0, "maxRuntimeSeconds": 600},
        "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.16.0.0/28"]}},
        "serviceMonitor": {"enabled": True},
        "database": {"tls": {"caSecretRef": {"name": "jangar-ca"}}},
    },
    "scoped-reconcile-off-mtls": {
        "admission": {"namespaces": ["agents", "ci"], "reconcile": {"enabled": False}, "tls": {"clientCA": {"name": "ca", "kind": "ConfigMap"}}},
    },
    "database-ca": {"database": {"tls": {"caSecretRef": {"name": "jangar-ca", "key": "bundle.pem"}}}},
    "auto-lookup-cluster-scope": {"claimScope": "cluster", "admission": {"kubeLookup": "auto"}},
}

def containers(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = render(chart, values)
    found = [c for _, pod in out.pod_specs() for c in pod["containers"] + pod.get("initContainers", [])]
    assert len(found) == 2
    return found


def cli_of(container: dict[str, Any], clis: dict[str, Cli]) -> Cli:
    binary = PurePosixPath(container["command"][0]).name
    assert binary in clis, f"container {container['name']} runs {container['command']}, not one of {sorted(clis)}"
    assert container["command"] == [f"/usr/local/bin/{binary}"]
    return clis[binary]


def check_value(cli: Cli, option: Option, value: str, where: str) -> None:
    if option.possible is not None:
        assert value in option.possible, f"{where}: {value!r} is not one of {option.possible} ({cli.binary} --{option.flag})"
    elif option.default is not None and re.fullmatch(r"\d+", option.default):
        assert re.fullmatch(r"\d+", value), f"{where}: {value!r} is not a non-negative integer ({cli.binary} --{option.flag})"


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_flags_and_env_are_ones_the_binaries_accept(chart: helm.Chart, clis: dict[str, Cli], values: dict[str, Any]) -> None:
    for container in containers(chart, values):
        cli = cli_of(container, clis)
        for arg in container.get("args", []):
            m = re.fullmatch(r"--([a-z0-9-]+)(?:=(.*))?", arg)
            assert m, f"{cli.binary}: argument {arg!r} is not in --flag=value form"
            flag, value = m.group(1), m.group(2)
            assert flag in cli.options, f"{cli.binary} has no --{flag} (chart passes {arg!r})"
            if value is not None:
                check_value(cli, cli.options[flag], value, arg)
        by_env = cli.by_env()
        for name, entry in env_of(container).items():
            assert name in by_env, f"{cli.binary} reads no environment variable {name} (its --help lists {sorted(by_env)})"
            if "value" in entry:
                check_value(cli, by_env[name], entry["value"], f"{cli.binary} env {name}")
        assert "DATABASE_URL" in env_of(container), f"{cli.binary} requires --database-url / DATABASE_URL"


def test_reconciler_settings_reach_only_the_webhook(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    """The reconciler's variables go to the webhook, with the values its flags take, and never to
    the pruner."""
    reconciler_env = {"JANGAR_ORCHESTRATION_DEDUPE_RECONCILE", "JANGAR_ORCHESTRATION_DEDUPE_NAMESPACES"}
    for container in containers(chart, {"admission": {"namespaces": ["agents", "ci"]}}):
        env = env_of(container)
        if cli_of(container, clis).binary == "dedupe-pruner":
            assert not reconciler_env & set(env)
            continue
        assert env["JANGAR_ORCHESTRATION_DEDUPE_RECONCILE"]["value"] in {"auto", "on", "off"}
        assert env["JANGAR_ORCHESTRATION_DEDUPE_NAMESPACES"]["value"] == "agents,ci"


def test_user_env_vars_reach_only_their_own_binary(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    """The knobs of one binary set through admission/pruner.env.vars stay off the other."""
    values = {
        "admission": {"env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE": "8", "JANGAR_ORCHESTRATION_DEDUPE_HTTP2": "false"}}},
        "pruner": {"env": {"vars": {"JANGAR_ORCHESTRATION_DEDUPE_PRUNE_DRY_RUN": "true"}}},
    }
    for container in containers(chart, values):
        cli = cli_of(container, clis)
        for name in env_of(container):
            assert name in cli.by_env(), f"{cli.binary} reads no {name}"


def test_listen_addresses_match_ports_and_probes(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    out = render(chart, {"admission": {"port": 8443, "metricsPort": 9091}})
    container = out.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a[2:].split("=", 1) for a in container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args["listen"] == f"0.0.0.0:{ports['https']}" == "0.0.0.0:8443"
    assert args["metrics-listen"] == f"0.0.0.0:{ports['metrics']}" == "0.0.0.0:9091"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    # The binary's own defaults say what the flags mean.
    assert "HTTPS" in clis["dedupe-admission"].help_text and "/readyz" in clis["dedupe-admission"].help_text


def test_tls_files_are_mounted_where_the_binary_reads_them(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    admission = clis["dedupe-admission"]
    for mode_values in ({}, {"admission": {"tls": {"mode": "helm"}}}, {"admission": {"tls": {"mode": "secret", "secret": {"name": "t", "caBundle": "Q0E="}}}}, {"admission": {"tls": {"mode": "self"}}}):
        pod = render(chart, mode_values).one("Deployment")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        flags = {a[2:].split("=", 1)[0] for a in container["args"]}
        env = env_of(container)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        files = {
            f"{mounts[name]}/{item['path']}"
            for name, volume in volumes.items()
            if "secret" in volume
            for item in volume["secret"]["items"]
        }
        # tls.mode self: the webhook writes the files itself, into a writable emptyDir there.
        writable = {
            m["mountPath"]
            for m in container["volumeMounts"]
            if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
        }
        for flag in ("tls-cert", "tls-key"):
            option = admission.options[flag]
            if flag in flags or option.env in env:
                pytest.fail(f"the chart overrides --{flag}; update this test to follow it")
            if mode_values.get("admission", {}).get("tls", {}).get("mode") == "self":
                assert option.default.rsplit("/", 1)[0] in writable, f"--{flag} defaults to {option.default}, writable: {sorted(writable)}"
            else:
                assert option.default in files, f"--{flag} defaults to {option.default}, the chart mounts {sorted(files)}"


def test_pod_failure_policy_uses_the_pruners_configuration_error_exit_code(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    text = clis["dedupe-pruner"].help_text
    codes = dict((m.group(2).strip(), int(m.group(1))) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", text.split("Exit codes:", 1)[1], re.M))
    (config_error,) = [code for meaning, code in codes.items() if meaning.startswith("configuration error")]
    rules = render(chart).one("CronJob")["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert fail_job == [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [config_error]}}]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]


def test_pruner_defaults_match_the_binary(chart: helm.Chart, clis: dict[str, Cli]) -> None:
    """The chart's defaults are the binary's, so an unset value and the chart agree."""
    values = chart.values
    pruner = clis["dedupe-pruner"].options
    assert str(values["retentionDays"]) == pruner["retention-days"].default
    assert str(values["pruner"]["batchSize"]) == pruner["batch-size"].default
    assert str(values["pruner"]["batchPauseMs"]) == pruner["batch-pause-ms"].default
    assert str(values["pruner"]["maxRuntimeSeconds"]) == pruner["max-runtime-seconds"].default
    admission = clis["dedupe-admission"].options
    assert values["claimScope"] == admission["claim-scope"].default
    assert str(values["admission"]["pendingGraceSeconds"]) == admission["pending-grace-seconds"].default
    assert str(values["admission"]["storeTimeoutMs"]) == admission["store-timeout-ms"].default
    assert str(values["admission"]["maxConcurrentRequests"]) == admission["max-concurrent-requests"].default
    group_commit = values["admission"]["groupCommit"]
    assert str(group_commit["enabled"]).lower() == admission["group-commit"].default
    assert str(group_commit["maxBatch"]) == admission["group-commit-max-batch"].default
    assert str(group_commit["inFlight"]) == admission["group-commit-in-flight"].default
    assert str(group_commit["lingerUs"]) == admission["group-commit-linger-us"].default
    assert values["migrations"] == admission["migrations"].default


def test_the_image_installs_the_binaries_where_the_chart_runs_them() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for binary in ("dedupe-admission", "dedupe-pruner"):
        assert f"/usr/local/bin/{binary}" in dockerfile or re.search(rf"{binary}\b.*/usr/local/bin/", dockerfile), binary
    # Numeric, so that runAsNonRoot can be verified by the kubelet; the chart's runAsUser.
    assert re.search(r"^USER 65532(:65532)?$", dockerfile, re.M)
