//! What the reconciler knows about the cluster: every labelled run its watches show, grouped
//! by the claim key each carries. Pure (no I/O), so the rules — oldest holds, conflicts,
//! which keys need a store write — are unit tests.

use std::collections::{BTreeSet, HashMap, HashSet};

use dedupe_store::{ClaimKey, ClaimScope, ObservedRun};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;

use crate::lookup::view_of;

/// A live run carrying a key. Ordered so the first is the one that holds the key: oldest by
/// creationTimestamp, ties by name (then namespace, for the `cluster` scope).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub created: Option<Time>,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Several live runs on one key: they got in while the webhook was bypassed. Reported,
/// never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub key: ClaimKey,
    pub holder: Member,
    pub others: Vec<Member>,
}

type RunId = (String, String);

/// The watched runs, by key.
#[derive(Debug)]
pub struct Index {
    scope: ClaimScope,
    runs: HashMap<RunId, (ClaimKey, Member)>,
    keys: HashMap<ClaimKey, BTreeSet<Member>>,
    /// Keys whose runs changed since they were last written to the store.
    dirty: HashSet<ClaimKey>,
    /// Keys with more than one live run, and how many runs were last reported for each.
    conflicts: HashMap<ClaimKey, usize>,
}

impl Index {
    pub fn new(scope: ClaimScope) -> Self {
        Self {
            scope,
            runs: HashMap::new(),
            keys: HashMap::new(),
            dirty: HashSet::new(),
            conflicts: HashMap::new(),
        }
    }

    /// A run was added or changed. A run already known under the same key changes nothing
    /// (status updates are most of the watch's traffic and need no store write).
    pub fn apply(&mut self, object: &DynamicObject) {
        let view = view_of(object);
        let id = (view.namespace.clone(), view.name.clone());
        let Some(key) = view.claim_key(self.scope) else {
            // Not a run that can hold a claim (bad label, spec naming another delivery…).
            self.remove(&id);
            return;
        };
        let member = Member {
            created: object.metadata.creation_timestamp.clone(),
            name: view.name,
            namespace: view.namespace,
            uid: view.uid,
        };
        if self.runs.get(&id).is_some_and(|(k, m)| *k == key && *m == member) {
            return;
        }
        self.remove(&id);
        self.keys.entry(key.clone()).or_default().insert(member.clone());
        self.dirty.insert(key.clone());
        self.runs.insert(id, (key, member));
    }

    /// A run was deleted. Its claim stays (deleting a run does not free its delivery); only
    /// the conflict count can change.
    pub fn delete(&mut self, object: &DynamicObject) {
        let id = (
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        self.remove(&id);
    }

    fn remove(&mut self, id: &RunId) {
        if let Some((key, member)) = self.runs.remove(id) {
            if let Some(members) = self.keys.get_mut(&key) {
                members.remove(&member);
                if members.is_empty() {
                    self.keys.remove(&key);
                }
            }
            self.dirty.insert(key);
        }
    }

    /// A watch (re)listed: `objects` is everything it shows in `namespace` (`None` = all
    /// namespaces). Runs there that are not listed are gone; every listed key is written
    /// again, which heals whatever a missed event or a pruned claim left behind.
    pub fn replace(&mut self, namespace: Option<&str>, objects: &[DynamicObject]) {
        let listed: HashSet<RunId> = objects
            .iter()
            .map(|o| {
                (
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let gone: Vec<RunId> = self
            .runs
            .keys()
            .filter(|(ns, _)| namespace.is_none_or(|n| n == ns))
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for id in &gone {
            self.remove(id);
        }
        for object in objects {
            self.apply(object);
        }
        let relisted: Vec<ClaimKey> = self
            .runs
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, (key, _))| key.clone())
            .collect();
        self.dirty.extend(relisted);
    }

    pub fn dirty_keys(&self) -> usize {
        self.dirty.len()
    }

    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Keys with more than one live run now.
    pub fn conflicts(&self) -> usize {
        self.conflicts.len()
    }

    /// Takes dirty keys until about `max_rows` runs are gathered: one row per live run
    /// (each may be named by a pending claim), the oldest marked as holding. Also returns
    /// the conflicts that are new or grew, to report once.
    pub fn take_batch(&mut self, max_rows: usize) -> (Vec<ObservedRun>, Vec<Conflict>) {
        self.take_batch_where(max_rows, |_| true)
    }

    /// [`Index::take_batch`] for the keys `ready` accepts; the others stay dirty (a key
    /// whose namespace's watch has not listed yet is not written: an older run may still
    /// be coming).
    pub fn take_batch_where(
        &mut self,
        max_rows: usize,
        ready: impl Fn(&ClaimKey) -> bool,
    ) -> (Vec<ObservedRun>, Vec<Conflict>) {
        let mut rows = Vec::new();
        let mut conflicts = Vec::new();
        // In primary-key order: neighbouring keys share index pages, and a (re)list is
        // written in the same order every time, so a restart resumes where it stopped.
        let mut keys: Vec<ClaimKey> = self.dirty.iter().cloned().collect();
        keys.sort_by(|a, b| {
            (&a.delivery_id, a.scope.as_str(), &a.namespace, &a.orchestration).cmp(&(
                &b.delivery_id,
                b.scope.as_str(),
                &b.namespace,
                &b.orchestration,
            ))
        });
        for key in keys {
            if rows.len() >= max_rows {
                break;
            }
            if !ready(&key) {
                continue;
            }
            self.dirty.remove(&key);
            let Some(members) = self.keys.get(&key) else {
                self.conflicts.remove(&key);
                continue;
            };
            for (i, m) in members.iter().enumerate() {
                rows.push(ObservedRun {
                    key: key.clone(),
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    uid: m.uid.clone(),
                    holds: i == 0,
                });
            }
            if members.len() > 1 {
                let reported = self.conflicts.insert(key.clone(), members.len()).unwrap_or(0);
                if members.len() > reported {
                    let mut all = members.iter().cloned();
                    if let Some(holder) = all.next() {
                        conflicts.push(Conflict {
                            key: key.clone(),
                            holder,
                            others: all.collect(),
                        });
                    }
                }
            } else {
                self.conflicts.remove(&key);
            }
        }
        (rows, conflicts)
    }

    /// Puts keys back after a failed store write, to be written again.
    pub fn mark_dirty(&mut self, rows: &[ObservedRun]) {
        self.dirty.extend(rows.iter().map(|r| r.key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(ns: &str, name: &str, delivery: &str, created: &str) -> DynamicObject {
        let value = json!({
            "apiVersion": "orchestration.proompteng.ai/v1alpha1",
            "kind": "OrchestrationRun",
            "metadata": {
                "namespace": ns, "name": name, "uid": format!("uid-{name}"),
                "creationTimestamp": created,
                "labels": {"jangar.proompteng.ai/delivery-id": delivery}
            },
            "spec": {"orchestrationRef": {"name": "codex"}, "deliveryId": delivery}
        });
        match serde_json::from_value(value) {
            Ok(o) => o,
            Err(e) => panic!("test object: {e}"),
        }
    }

    #[test]
    fn the_oldest_run_holds_and_ties_go_by_name() {
        let mut index = Index::new(ClaimScope::Orchestration);
        index.replace(
            None,
            &[
                run("agents", "run-b", "d1", "2026-11-27T09:00:01Z"),
                run("agents", "run-c", "d1", "2026-11-27T09:00:00Z"),
                run("agents", "run-a", "d1", "2026-11-27T09:00:01Z"),
                run("agents", "solo", "d2", "2026-11-27T09:00:00Z"),
            ],
        );
        let (rows, conflicts) = index.take_batch(500);
        let holders: Vec<&str> = rows.iter().filter(|r| r.holds).map(|r| r.name.as_str()).collect();
        assert_eq!(rows.len(), 4);
        assert!(holders.contains(&"run-c") && holders.contains(&"solo") && holders.len() == 2);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].holder.name, "run-c");
        let others: Vec<&str> = conflicts[0].others.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(others, ["run-a", "run-b"]);
        assert_eq!(index.conflicts(), 1);
        assert_eq!(index.dirty_keys(), 0);
    }

    #[test]
    fn a_known_run_changing_status_writes_nothing_and_a_conflict_is_reported_once() {
        let mut index = Index::new(ClaimScope::Orchestration);
        let a = run("agents", "run-a", "d1", "2026-11-27T09:00:00Z");
        let b = run("agents", "run-b", "d1", "2026-11-27T09:00:05Z");
        index.apply(&a);
        index.apply(&b);
        assert_eq!(index.take_batch(500).1.len(), 1);
        index.apply(&a);
        assert_eq!(index.dirty_keys(), 0, "same run, same key: no write");
        index.delete(&b);
        let (rows, conflicts) = index.take_batch(500);
        assert_eq!((rows.len(), conflicts.len(), index.conflicts()), (1, 0, 0));
    }

    #[test]
    fn a_relist_drops_runs_it_no_longer_shows_in_its_namespace_only() {
        let mut index = Index::new(ClaimScope::Orchestration);
        index.apply(&run("agents", "run-a", "d1", "2026-11-27T09:00:00Z"));
        index.apply(&run("ci", "run-x", "d9", "2026-11-27T09:00:00Z"));
        let _ = index.take_batch(500);
        index.replace(
            Some("agents"),
            &[run("agents", "run-b", "d2", "2026-11-27T09:00:00Z")],
        );
        assert_eq!(
            index.runs(),
            2,
            "run-a gone, run-x (another namespace's watch) kept"
        );
        let (rows, _) = index.take_batch(500);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["run-b"]);
    }

    #[test]
    fn runs_that_cannot_hold_a_claim_are_left_out() {
        let mut index = Index::new(ClaimScope::Orchestration);
        index.apply(&run("agents", "bad", "not a label value", "2026-11-27T09:00:00Z"));
        assert_eq!((index.runs(), index.dirty_keys()), (0, 0));
    }

    #[test]
    fn keys_not_ready_stay_dirty() {
        let mut index = Index::new(ClaimScope::Orchestration);
        index.apply(&run("agents", "run-a", "d1", "2026-11-27T09:00:00Z"));
        index.apply(&run("ci", "run-c", "d2", "2026-11-27T09:00:00Z"));
        let (rows, _) = index.take_batch_where(500, |k| k.namespace == "agents");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["run-a"]);
        assert_eq!(index.dirty_keys(), 1);
    }

    #[test]
    fn batches_are_bounded() {
        let mut index = Index::new(ClaimScope::Cluster);
        let runs: Vec<_> = (0..1200)
            .map(|i| {
                run(
                    "agents",
                    &format!("r{i}"),
                    &format!("d{i}"),
                    "2026-11-27T09:00:00Z",
                )
            })
            .collect();
        index.replace(None, &runs);
        let mut total = 0;
        loop {
            let (rows, _) = index.take_batch(500);
            if rows.is_empty() {
                break;
            }
            assert!(rows.len() <= 500);
            total += rows.len();
        }
        assert_eq!(total, 1200);
    }
}
