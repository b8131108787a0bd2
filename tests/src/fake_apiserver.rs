//! A fake Kubernetes API server over HTTP on loopback — the only mock the tests use, kept for
//! what the real kube-apiserver (`crate::kube`) cannot be made to do on demand: a 410 Gone on
//! an open watch, volume back-fills set up in milliseconds, and a record of every request.
//!
//! It serves OrchestrationRuns the way kube-apiserver does, as far as the webhook uses it:
//! - `GET …/namespaces/{ns}/orchestrationruns/{name}`: the object, or a 404 Status;
//! - list, namespaced and cluster-wide, with `labelSelector`, `limit`/`continue` paging and
//!   the list's `resourceVersion`;
//! - watch (`?watch=true&resourceVersion=N`): newline-delimited events after N, `BOOKMARK`s
//!   when `allowWatchBookmarks` is asked for, and a 410 Gone (an `ERROR` event, as the real
//!   server sends) for a resourceVersion older than the history it keeps, which forces the
//!   client to list again ([`FakeApiServer::expire_watches`]).
//!
//! Every request's path is recorded, so tests can check what the webhook asked for.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

const LABEL: &str = "jangar.proompteng.ai/delivery-id";
const API_VERSION: &str = "orchestration.proompteng.ai/v1alpha1";
/// How long an idle watch waits before sending a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// A run to put into the fake API server.
#[derive(Debug, Clone)]
pub struct FakeRun {
    pub namespace: String,
    pub name: String,
    pub delivery: Option<String>,
    pub orchestration: String,
    /// RFC 3339; the server's clock when `None`.
    pub created: Option<String>,
    pub uid: String,
}

impl FakeRun {
    /// A run of orchestration `demo-orchestration` (the fixtures'), labelled with `delivery`.
    pub fn new(namespace: &str, name: &str, delivery: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            delivery: Some(delivery.to_owned()),
            orchestration: "demo-orchestration".to_owned(),
            created: None,
            uid: uuid::Uuid::new_v4().to_string(),
        }
    }

    pub fn orchestration(mut self, orchestration: &str) -> Self {
        self.orchestration = orchestration.to_owned();
        self
    }

    pub fn created(mut self, rfc3339: &str) -> Self {
        self.created = Some(rfc3339.to_owned());
        self
    }

    pub fn unlabelled(mut self) -> Self {
        self.delivery = None;
        self
    }
}

#[derive(Default)]
struct Inner {
    runs: BTreeMap<(String, String), Value>,
    resource_version: u64,
    /// (resourceVersion, type, object) of every change since `oldest`.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch with a 410 Gone (expiry).
    epoch: u64,
    requests: Vec<String>,
}

type Shared = (Arc<Mutex<Inner>>, watch::Sender<u64>);

/// The fake API server; dropped with the test (its task ends with the runtime).
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
    pub addr: SocketAddr,
    kubeconfig: Arc<tempfile::NamedTempFile>,
}

impl FakeApiServer {
    pub async fn start() -> Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            resource_version: 1000,
            oldest: 1000,
            ..Inner::default()
        }));
        let (changed, _) = watch::channel(0u64);
        let base = "/apis/orchestration.proompteng.ai/v1alpha1";
        let router = Router::new()
            .route(&format!("{base}/orchestrationruns"), get(list_or_watch_all))
            .route(
                &format!("{base}/namespaces/{{namespace}}/orchestrationruns"),
                get(list_or_watch_namespace),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/orchestrationruns/{{name}}"),
                get(get_run),
            )
            .fallback(other)
            .with_state((inner.clone(), changed.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener, router));
        let cluster = format!("server: http://{addr}");
        let kubeconfig = tempfile::Builder::new()
            .prefix("kubeconfig-")
            .suffix(".yaml")
            .tempfile()?;
        std::fs::write(
            kubeconfig.path(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    {cluster}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n"
            ),
        )?;
        Ok(Self {
            inner,
            changed,
            addr,
            kubeconfig: Arc::new(kubeconfig),
        })
    }

    /// A kubeconfig pointing at this server (pass as `KUBECONFIG`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().to_path_buf()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates or replaces runs, one event each, as the API server would after admission.
    pub fn put_all(&self, runs: impl IntoIterator<Item = FakeRun>) {
        let mut inner = self.lock();
        for run in runs {
            inner.resource_version += 1;
            let rv = inner.resource_version;
            let id = (run.namespace.clone(), run.name.clone());
            let created = run
                .created
                .clone()
                .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            let labels = match &run.delivery {
                Some(d) => json!({ LABEL: d }),
                None => json!({}),
            };
            let mut spec = json!({"orchestrationRef": {"name": run.orchestration}});
            if let Some(d) = &run.delivery {
                spec["deliveryId"] = json!(d);
            }
            let object = json!({
                "apiVersion": API_VERSION,
                "kind": "OrchestrationRun",
                "metadata": {
                    "name": run.name, "namespace": run.namespace, "uid": run.uid,
                    "resourceVersion": rv.to_string(), "creationTimestamp": created,
                    "labels": labels,
                },
                "spec": spec,
            });
            let kind = if inner.runs.contains_key(&id) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            inner.runs.insert(id, object.clone());
            inner.history.push((rv, kind, object));
        }
        let rv = inner.resource_version;
        drop(inner);
        self.changed.send_replace(rv);
    }

    pub fn put(&self, run: FakeRun) {
        self.put_all([run]);
    }

    /// Makes run `namespace/name` exist, labelled with `delivery` (orchestration
    /// `demo-orchestration`).
    pub fn add_run(&self, namespace: &str, name: &str, delivery: &str) {
        self.put(FakeRun::new(namespace, name, delivery));
    }

    /// Deletes a run (a `DELETED` event).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        if let Some(mut object) = inner.runs.remove(&(namespace.to_owned(), name.to_owned())) {
            inner.resource_version += 1;
            let rv = inner.resource_version;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            inner.history.push((rv, "DELETED", object));
        }
        let rv = inner.resource_version;
        drop(inner);
        self.changed.send_replace(rv);
    }

    /// Forgets the watch history (as etcd compaction does) and ends every open watch with
    /// 410 Gone: clients must list again.
    pub fn expire_watches(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest = inner.resource_version;
        inner.epoch += 1;
        let rv = inner.resource_version;
        drop(inner);
        self.changed.send_replace(rv);
    }

    /// Paths requested so far (with the query string for lists and watches).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Requests for one run by name (the webhook's lookups), leaving out lists and watches.
    pub fn gets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|p| !p.contains('?') && p.split('/').count() == 8)
            .collect()
    }

    /// How many list requests (not watches) were served.
    pub fn lists(&self) -> usize {
        self.requests()
            .iter()
            .filter(|p| p.contains("orchestrationruns?") && !p.contains("watch=true"))
            .count()
    }
}

fn record(inner: &Arc<Mutex<Inner>>, uri: &Uri) {
    let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    let path = match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_owned(),
    };
    inner.requests.push(path);
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, Json(status(code.as_u16(), reason, message))).into_response()
}

async fn get_run(
    State((inner, _)): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    record(&inner, &uri);
    let found = inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .runs
        .get(&(namespace, name.clone()))
        .cloned();
    match found {
        Some(object) => Json(object).into_response(),
        None => {
            let mut body = status(
                404,
                "NotFound",
                &format!("orchestrationruns.orchestration.proompteng.ai \"{name}\" not found"),
            );
            body["details"] =
                json!({"name": name, "group": "orchestration.proompteng.ai", "kind": "orchestrationruns"});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

async fn list_or_watch_all(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    list_or_watch(state, None, query, uri).await
}

async fn list_or_watch_namespace(
    State(state): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    list_or_watch(state, Some(namespace), query, uri).await
}

async fn list_or_watch(
    (inner, changed): Shared,
    namespace: Option<String>,
    query: HashMap<String, String>,
    uri: Uri,
) -> Response {
    record(&inner, &uri);
    let selector = match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let filter = Filter { namespace, selector };
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        return watch_response(inner, changed, filter, from, bookmarks);
    }
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    // continue = "<list resourceVersion>/<namespace>/<name>" of the last item sent.
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (inner.resource_version, None),
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let rv = parts.next().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
            if rv < inner.oldest {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            let key = (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            );
            (rv, Some(key))
        }
    };
    let range = match &after {
        Some(key) => inner
            .runs
            .range((std::ops::Bound::Excluded(key.clone()), std::ops::Bound::Unbounded)),
        None => inner.runs.range(..),
    };
    let mut items = Vec::new();
    let mut next = None;
    for (key, object) in range.filter(|(_, o)| filter.matches(o)) {
        if items.len() == limit {
            next = Some(format!("{list_rv}/{}/{}", key.0, key.1));
            break;
        }
        items.push(object.clone());
    }
    // The token names the last item sent; the next page starts after it.
    let token = next.and_then(|_| {
        items.last().map(|o| {
            format!(
                "{list_rv}/{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
    });
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    Json(json!({
        "apiVersion": API_VERSION,
        "kind": "OrchestrationRunList",
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

/// The events after `from`, then new ones as they happen, bookmarks when idle; ends with
/// 410 Gone when the history is expired.
fn watch_response(
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
    filter: Filter,
    from: u64,
    bookmarks: bool,
) -> Response {
    let (epoch, too_old) = {
        let inner = inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.epoch, from < inner.oldest)
    };
    struct Watch {
        inner: Arc<Mutex<Inner>>,
        changed: watch::Receiver<u64>,
        filter: Filter,
        sent: u64,
        epoch: u64,
        bookmarks: bool,
        done: bool,
    }
    let state = Watch {
        inner,
        changed: changed.subscribe(),
        filter,
        sent: from,
        epoch,
        bookmarks,
        done: too_old,
    };
    let gone = line(&json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}));
    if too_old {
        return Response::new(Body::from(gone));
    }
    let stream = futures::stream::unfold(state, move |mut w| {
        let gone = gone.clone();
        async move {
            if w.done {
                return None;
            }
            loop {
                let (events, epoch, rv) = {
                    let inner = w.inner.lock().unwrap_or_else(|p| p.into_inner());
                    let events: Vec<Value> = inner
                        .history
                        .iter()
                        .filter(|(rv, _, o)| *rv > w.sent && w.filter.matches(o))
                        .map(|(_, kind, o)| json!({"type": kind, "object": o}))
                        .collect();
                    (events, inner.epoch, inner.resource_version)
                };
                if epoch != w.epoch {
                    w.done = true;
                    return Some((Ok::<Bytes, Infallible>(Bytes::from(gone)), w));
                }
                if !events.is_empty() {
                    w.sent = rv;
                    let mut out = Vec::new();
                    for e in &events {
                        out.extend_from_slice(&line(e));
                    }
                    return Some((Ok(Bytes::from(out)), w));
                }
                w.sent = w.sent.max(rv);
                match tokio::time::timeout(BOOKMARK_EVERY, w.changed.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) if w.bookmarks => {
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "apiVersion": API_VERSION, "kind": "OrchestrationRun",
                            "metadata": {"resourceVersion": w.sent.to_string()}
                        }});
                        return Some((Ok(Bytes::from(line(&bookmark))), w));
                    }
                    Err(_) => continue,
                }
            }
        }
    });
    Response::new(Body::from_stream(stream))
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// Which runs a list or watch asks for.
struct Filter {
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.selector.matches(&object["metadata"]["labels"])
    }
}

/// Equality-based label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated.
struct Selector(Vec<(String, Requirement)>);

enum Requirement {
    Exists,
    Absent,
    Equals(String),
    NotEquals(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let req = if let Some((k, v)) = term.split_once("!=") {
                (k, Requirement::NotEquals(v.to_owned()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Requirement::Equals(v.to_owned()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k, Requirement::Absent)
            } else {
                (term, Requirement::Exists)
            };
            if req.0.trim().is_empty() {
                return Err(format!("unable to parse requirement: {term:?}"));
            }
            out.push((req.0.trim().to_owned(), req.1));
        }
        Ok(Self(out))
    }

    fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|(k, req)| {
            let value = labels.get(k).and_then(Value::as_str);
            match req {
                Requirement::Exists => value.is_some(),
                Requirement::Absent => value.is_none(),
                Requirement::Equals(v) => value == Some(v.as_str()),
                Requirement::NotEquals(v) => value != Some(v.as_str()),
            }
        })
    }
}

async fn other(State((inner, _)): State<Shared>, uri: Uri) -> Response {
    record(&inner, &uri);
    (StatusCode::NOT_FOUND, "not served by the fake API server").into_response()
}

/// Accepts connections and serves `router` on each.
async fn serve(listener: tokio::net::TcpListener, router: Router) {
    while let Ok((tcp, _)) = listener.accept().await {
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}
