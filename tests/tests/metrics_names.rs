//! Every metric the chart's alerts (templates/prometheusrule.yaml) and Grafana dashboard
//! (dashboards/orchestration-dedupe.json) query is one the real `dedupe-admission` exports on
//! `/metrics`, with the labels they select and group by.
//!
//! A labelled family without samples prints only its `# HELP`/`# TYPE` lines, so the test
//! first makes each family produce samples: a claimed CREATE (requests, latency), a 415, a
//! 503 from a second webhook whose store is down, a failed and then a successful certificate
//! reload. The names it accepts are the sample names actually scraped; every `# TYPE` family
//! must have produced some, so nothing is accepted on the strength of a registration alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use dedupe_tests::{Answer, Review, TestCerts, TestDb, Webhook};

/// Labels Prometheus adds to every scraped series (the target's), which the binary does not
/// print: what the chart's ServiceMonitor yields, plus what users commonly add.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "job",
    "pod",
    "instance",
    "service",
    "container",
    "endpoint",
];
/// Series the cluster exports, not the webhook, with the labels the alerts use: kube-state-
/// metrics' (the pruner's CronJob, the webhook's Deployment) and the API server's own view of
/// its webhook calls.
const CLUSTER_METRICS: &[(&str, &[&str])] = &[
    ("kube_cronjob_status_last_successful_time", &["cronjob"]),
    ("kube_cronjob_created", &["cronjob"]),
    ("kube_deployment_status_replicas_available", &["deployment"]),
    ("kube_deployment_spec_replicas", &["deployment"]),
    (
        "apiserver_admission_webhook_rejection_count",
        &["name", "type", "operation", "error_type", "rejection_code"],
    ),
    (
        "apiserver_admission_webhook_request_total",
        &["name", "type", "operation", "code", "rejected"],
    ),
];

fn chart_file(path: &str) -> Result<String> {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/orchestration-dedupe")
        .join(path);
    std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
}

/// Sample name → label names seen on it; and the `# TYPE` families.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<String, BTreeSet<String>>,
    label_values: BTreeMap<String, BTreeSet<String>>,
    families: BTreeMap<String, String>,
}

impl Exposition {
    fn add(&mut self, text: &str) -> Result<()> {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    bail!("malformed TYPE line {line:?}");
                };
                self.families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).context("sample line without a value")?;
            let name = &line[..name_end];
            let labels = self.samples.entry(name.to_owned()).or_default();
            if line[name_end..].starts_with('{') {
                let close = line.rfind('}').context("unclosed label set")?;
                for pair in line[name_end + 1..close].split(',').filter(|p| !p.is_empty()) {
                    let (label, value) = pair.split_once('=').context("label without =")?;
                    labels.insert(label.to_owned());
                    self.label_values
                        .entry(format!("{name}/{label}"))
                        .or_default()
                        .insert(value.trim_matches('"').to_owned());
                }
            }
        }
        Ok(())
    }
}

/// Metric names in a PromQL expression (identifiers followed by a selector or a range), and
/// for each selector the label names it matches on.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let name = &expr[start..i];
            if name.starts_with("orchestration_dedupe_")
                || name.starts_with("kube_")
                || name.starts_with("apiserver_")
            {
                let mut labels = Vec::new();
                if bytes.get(i) == Some(&b'{') {
                    let close = expr[i..].find('}').map_or(expr.len(), |c| i + c);
                    for matcher in expr[i + 1..close].split(',') {
                        let label: String = matcher
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !label.is_empty() && matcher.contains('=') {
                            labels.push(label);
                        }
                    }
                    i = close;
                }
                found.push((name.to_owned(), labels));
            }
        } else {
            i += 1;
        }
    }
    found
}

/// Label names in `by (…)` and `on (…)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by (", "on ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            rest = &rest[at + keyword.len()..];
            let close = rest.find(')').unwrap_or(rest.len());
            out.extend(
                rest[..close]
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// The PromQL of every alert in the rule template (the `expr: |` blocks).
fn rule_exprs(template: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = template.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "expr: |" {
            let indent = line.len() - line.trim_start().len();
            let mut expr = String::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() <= indent {
                    break;
                }
                expr.push_str(next.trim());
                expr.push('\n');
                lines.next();
            }
            exprs.push(without_template_actions(&expr));
        }
    }
    exprs
}

/// The expression with Helm's `{{ … }}` actions (the release's selector, thresholds) taken
/// out, leaving the PromQL the template writes itself.
fn without_template_actions(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        rest = rest[open..]
            .find("}}")
            .map_or("", |close| &rest[open + close + 2..]);
    }
    out.push_str(rest);
    out
}

fn dashboard_exprs(json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let mut exprs = Vec::new();
    for panel in v["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            exprs.push(target["expr"].as_str().context("expr")?.to_owned());
        }
    }
    for var in v["templating"]["list"].as_array().context("templating")? {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    Ok(exprs)
}

async fn scrape(webhook: &Webhook) -> Result<String> {
    Ok(String::from_utf8(webhook.ops("/metrics").await?.body.to_vec())?)
}

/// Scrapes until `done` holds, for up to 30 s (the reload poll is 1 s; this is a bound, not
/// a measurement).
async fn scrape_until(webhook: &Webhook, done: impl Fn(&str) -> bool) -> Result<String> {
    for _ in 0..150 {
        let text = scrape(webhook).await?;
        if done(&text) {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "metrics never showed what was awaited:\n{}",
        scrape(webhook).await?
    )
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() -> Result<()> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &["--kube-lookup", "off", "--tls-reload-poll-seconds", "1"],
        &[],
    )
    .await?;
    let claimed = Answer::from_reply(
        &webhook
            .review(Review::create(&uuid::Uuid::new_v4().to_string(), "run-m")?.json())
            .await?,
    )?;
    ensure!(claimed.decision() == "claimed", "{:?}", claimed.0);
    let wrong_type = webhook
        .client()?
        .post("/validate", "text/plain", "not json")
        .await?;
    ensure!(
        wrong_type.status == 415,
        "expected 415, got {}",
        wrong_type.status
    );

    // A broken key: the reload fails (and the old certificate stays); then a good pair.
    std::fs::write(certs.key(), "not a key")?;
    scrape_until(&webhook, |m| m.contains("result=\"failure\"")).await?;
    let renewed = certs.certs.reissue(&certs_dev::CertRequest::new(
        vec![dedupe_tests::webhook::SERVER_NAME.into()],
        vec!["127.0.0.1".parse()?],
    ))?;
    std::fs::write(certs.cert(), &renewed.server_cert_pem)?;
    std::fs::write(certs.key(), &renewed.server_key_pem)?;
    let main = scrape_until(&webhook, |m| m.contains("result=\"success\"")).await?;
    // The claim went through group commit (on by default): one batch carrying it.
    for counter in ["group_commit_batches_total", "group_commit_claims_total"] {
        let name = format!("orchestration_dedupe_{counter} ");
        let value: u64 = main
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .with_context(|| format!("no {name} in\n{main}"))?
            .trim()
            .parse()?;
        ensure!(value == 1, "{counter} = {value}, expected 1 (one claimed CREATE)");
    }

    // A second webhook whose store is down answers 503 (it serves without migrating).
    let down = Webhook::start(
        &dedupe_tests::unreachable_url()?,
        &certs,
        &[
            "--kube-lookup",
            "off",
            "--migrations",
            "skip",
            "--store-timeout-ms",
            "500",
        ],
        &[],
    )
    .await?;
    let reply = down
        .review(Review::create(&uuid::Uuid::new_v4().to_string(), "run-down")?.json())
        .await?;
    ensure!(reply.status == 503, "expected 503, got {}", reply.status);

    let mut exported = Exposition::default();
    exported.add(&main)?;
    exported.add(&scrape(&down).await?)?;
    // Every registered family produced samples: the check below is against real series.
    for (family, kind) in &exported.families {
        let has_samples = exported.samples.keys().any(|s| s.starts_with(family.as_str()));
        ensure!(
            has_samples,
            "family {family} ({kind}) has no samples yet: drive it first"
        );
    }
    ensure!(
        exported
            .label_values
            .get("orchestration_dedupe_http_errors_total/status")
            .is_some_and(|v| v.contains("503")),
        "{exported:#?}"
    );

    let mut checked = 0;
    let rules = rule_exprs(&chart_file("templates/prometheusrule.yaml")?);
    ensure!(rules.len() >= 6, "expected the alerts' exprs, found {rules:#?}");
    let dashboard = dashboard_exprs(&chart_file("dashboards/orchestration-dedupe.json")?)?;
    for expr in rules.iter().chain(&dashboard) {
        let used = selectors(expr);
        ensure!(!used.is_empty(), "no metric in {expr:?}");
        let mut known_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for (name, labels) in &used {
            if let Some((_, cluster_labels)) = CLUSTER_METRICS.iter().find(|(n, _)| n == name) {
                for label in labels {
                    ensure!(
                        cluster_labels.contains(&label.as_str()) || TARGET_LABELS.contains(&label.as_str()),
                        "{name} has no label {label} (in {expr:?})"
                    );
                }
                known_labels.extend(cluster_labels.iter().map(|l| (*l).to_owned()));
                continue;
            }
            let Some(exported_labels) = exported.samples.get(name) else {
                bail!(
                    "{name} (in {expr:?}) is not exported; exported: {:#?}",
                    exported.samples.keys()
                );
            };
            for label in labels {
                ensure!(
                    exported_labels.contains(label) || TARGET_LABELS.contains(&label.as_str()),
                    "{name} has no label {label} (in {expr:?}); it has {exported_labels:?}"
                );
            }
            known_labels.extend(exported_labels.iter().cloned());
            checked += 1;
        }
        for label in grouping_labels(expr) {
            ensure!(
                known_labels.contains(&label),
                "grouping by {label}, which none of {used:?} has (in {expr:?})"
            );
        }
    }
    // Label values the rules match on literally are ones the binary emits.
    let values = |key: &str| {
        exported
            .label_values
            .get(key)
            .with_context(|| format!("the binary exports no label {key}"))
    };
    ensure!(values("orchestration_dedupe_tls_reloads_total/result")?.contains("failure"));
    ensure!(values("orchestration_dedupe_http_errors_total/status")?.contains("503"));
    ensure!(checked >= 15, "only {checked} metric uses checked");
    Ok(())
}

#[test]
fn the_expression_readers_find_names_labels_and_groupings() {
    let template = "        - alert: A\n          expr: |\n            sum by (namespace, job) (rate(orchestration_dedupe_http_errors_total{ {{- $sel }}, status=\"503\"}[5m])) > {{ $r.x }}\n";
    let exprs = rule_exprs(template);
    assert_eq!(exprs.len(), 1);
    let used = selectors(&exprs[0]);
    assert_eq!(
        used,
        vec![(
            "orchestration_dedupe_http_errors_total".to_owned(),
            vec!["status".to_owned()]
        )]
    );
    assert_eq!(
        grouping_labels("sum by (le, operation) (x) unless on (a) y"),
        vec!["le", "operation", "a"]
    );
    let exprs = rule_exprs("        - alert: A\n          expr: |\n            up{a=\"1\"}\n            or x\n          for: 1m\n");
    assert_eq!(exprs, vec!["up{a=\"1\"}\nor x\n".to_owned()]);
}

/// The value of the first sample named exactly `name` (with or without labels).
fn sample(text: &str, name: &str) -> Result<(String, f64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .with_context(|| format!("no {name} in\n{text}"))?;
    let (head, value) = line.rsplit_once(' ').context("a sample without a value")?;
    Ok((head.to_owned(), value.parse()?))
}

#[tokio::test]
async fn build_info_and_the_standard_process_metrics_are_exported_and_plausible() -> Result<()> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let webhook = Webhook::start(db.url(), &certs, &["--kube-lookup", "off"], &[]).await?;
    let text = scrape(&webhook).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();

    let (labels, value) = sample(&text, "orchestration_dedupe_build_info")?;
    ensure!(value == 1.0, "{labels} {value}");
    let version = env!("CARGO_PKG_VERSION");
    ensure!(labels.contains(&format!("version=\"{version}\"")), "{labels}");
    let commit = labels
        .split("commit=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("no commit label in {labels}"))?;
    // A commit of this repository when git can tell (the binary may predate the newest
    // commit: any commit of the history is right), else the build's fallback.
    let known = std::process::Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .ok();
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git && std::env::var_os("DEDUPE_BUILD_COMMIT").is_none() {
        ensure!(
            commit.len() >= 7 && known.is_some_and(|s| s.success()),
            "commit {commit:?} is not a commit of this repository"
        );
    } else {
        ensure!(!commit.is_empty(), "{labels}");
    }

    let value = |name: &str| -> Result<f64> { Ok(sample(&text, name)?.1) };
    let started = value("process_start_time_seconds")?;
    ensure!(
        started <= now + 1.0 && started > now - 300.0,
        "the webhook started {started}, now is {now}"
    );
    let cpu = value("process_cpu_seconds_total")?;
    ensure!(
        (0.0..60.0).contains(&cpu),
        "cpu {cpu} s for a webhook that just started"
    );
    let rss = value("process_resident_memory_bytes")?;
    let virtual_ = value("process_virtual_memory_bytes")?;
    ensure!(
        rss > 1024.0 * 1024.0 && rss < virtual_,
        "rss {rss}, virtual {virtual_}"
    );
    let open = value("process_open_fds")?;
    let max = value("process_max_fds")?;
    // stdin/out/err, the listeners, the pool's connection, the certificate watch.
    ensure!(open >= 5.0 && open < max, "open fds {open}, max {max}");
    for (name, kind) in [
        ("process_cpu_seconds", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("orchestration_dedupe_build_info", "gauge"),
    ] {
        ensure!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}:\n{text}"
        );
    }
    Ok(())
}
