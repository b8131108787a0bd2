use super::*;
use serde_json::json;

fn run(ns: &str, name: &str, delivery: &str, created: &str) -> OrchestrationRun {
    run_with(ns, name, delivery, "codex", created)
}

fn run_with(ns: &str, name: &str, delivery: &str, orchestration: &str, created: &str) -> OrchestrationRun {
    let value = json!({
        "apiVersion": "orchestration.proompteng.ai/v1alpha1",
        "kind": "OrchestrationRun",
        "metadata": {
            "namespace": ns, "name": name, "uid": format!("uid-{name}"),
            "resourceVersion": "1",
            "creationTimestamp": created,
            "labels": {"jangar.proompteng.ai/delivery-id": delivery}
        },
        "spec": {"orchestrationRef": {"name": orchestration}, "deliveryId": delivery}
    });
    match serde_json::from_value(value) {
        Ok(o) => o,
        Err(e) => panic!("test object: {e}"),
    }
}

const T0: &str = "2026-11-27T09:00:00Z";

/// An index whose one watch has listed `runs`.
fn listed(scope: ClaimScope, runs: Vec<OrchestrationRun>) -> Index {
    let mut index = Index::new(scope, 1);
    index.init(0);
    for r in runs {
        assert_eq!(index.apply(0, r), None);
    }
    index.init_done(0);
    index
}

fn names(rows: &[ObservedRun]) -> Vec<(&str, bool)> {
    rows.iter().map(|r| (r.name.as_str(), r.holds)).collect()
}

#[test]
fn the_oldest_run_holds_and_ties_go_by_name() {
    let mut index = listed(
        ClaimScope::Orchestration,
        vec![
            run("agents", "run-b", "d1", "2026-11-27T09:00:01Z"),
            run("agents", "run-c", "d1", T0),
            run("agents", "run-a", "d1", "2026-11-27T09:00:01Z"),
            run("agents", "solo", "d2", T0),
        ],
    );
    let batch = index.take_write_batch(500);
    assert_eq!(
        names(&batch.rows),
        [
            ("run-c", true),
            ("run-a", false),
            ("run-b", false),
            ("solo", true)
        ]
    );
    assert_eq!(batch.conflicts.len(), 1);
    assert_eq!(batch.conflicts[0].holder, "agents/run-c");
    assert_eq!(batch.conflicts[0].others, ["agents/run-a", "agents/run-b"]);
    assert_eq!((index.conflicts(), index.unwritten()), (1, 0));
    assert!(index.take_sync());
    assert!(!index.take_sync(), "once per list");
}

#[test]
fn a_known_run_changing_status_writes_nothing_and_a_conflict_is_reported_once() {
    let mut index = listed(ClaimScope::Orchestration, vec![]);
    index.apply(0, run("agents", "run-a", "d1", T0));
    index.apply(0, run("agents", "run-b", "d1", "2026-11-27T09:00:05Z"));
    assert_eq!(index.take_write_batch(500).conflicts.len(), 1);
    index.apply(0, run("agents", "run-a", "d1", T0));
    assert_eq!(index.unwritten(), 0, "same run, same key: no write");
    index.delete(0, run("agents", "run-b", "d1", "2026-11-27T09:00:05Z"));
    let batch = index.take_write_batch(500);
    assert_eq!(names(&batch.rows), [("run-a", true)]);
    assert_eq!((batch.conflicts.len(), index.conflicts()), (0, 0));
}

/// A run deleted before its key was written is still written: the claim it may have
/// made is confirmed even though the run is gone by the flush.
#[test]
fn a_run_gone_before_the_flush_is_still_written() {
    let mut index = listed(ClaimScope::Orchestration, vec![]);
    index.apply(0, run("agents", "quick", "d1", T0));
    index.delete(0, run("agents", "quick", "d1", T0));
    assert_eq!(index.runs(), 0);
    let batch = index.take_write_batch(500);
    assert_eq!(names(&batch.rows), [("quick", true)]);
    assert_eq!(batch.rows[0].uid, "uid-quick");
    assert_eq!(index.unwritten(), 0);
    // A delete the index never saw alive counts as seen too; one already written does not.
    index.delete(0, run("agents", "unseen", "d2", T0));
    assert_eq!(names(&index.take_write_batch(500).rows), [("unseen", true)]);
    index.apply(0, run("agents", "written", "d3", T0));
    let _ = index.take_write_batch(500);
    index.delete(0, run("agents", "written", "d3", T0));
    assert_eq!(index.take_write_batch(500).rows, []);
    // While another run carries the key, a gone run only confirms.
    index.apply(0, run("agents", "live", "d4", T0));
    index.apply(0, run("agents", "twin", "d4", T0));
    index.delete(0, run("agents", "twin", "d4", T0));
    let rows = index.take_write_batch(500).rows;
    assert_eq!(names(&rows), [("twin", false), ("live", true)]);
}

#[test]
fn rows_put_back_after_a_failed_write_are_written_again_even_if_their_run_left() {
    let mut index = listed(ClaimScope::Orchestration, vec![run("agents", "a", "d1", T0)]);
    index.apply(0, run("agents", "b", "d2", T0));
    let rows = index.take_write_batch(500).rows;
    assert_eq!(rows.len(), 2);
    index.delete(0, run("agents", "b", "d2", T0));
    index.requeue(&rows);
    let again = index.take_write_batch(500).rows;
    let mut got = names(&again);
    got.sort();
    assert_eq!(got, [("a", true), ("b", true)]);
    assert_eq!(
        again.iter().find(|r| r.name == "b").map(|r| r.key.clone()),
        Some(rows[1].key.clone())
    );
}

#[test]
fn a_relist_drops_runs_it_no_longer_shows_in_its_namespace_only_and_writes_the_rest_again() {
    let mut index = Index::new(ClaimScope::Orchestration, 2);
    for w in 0..2 {
        index.init(w);
    }
    index.apply(0, run("agents", "run-a", "d1", T0));
    index.apply(0, run("agents", "run-b", "d2", T0));
    index.apply(1, run("ci", "run-x", "d9", T0));
    index.init_done(0);
    index.init_done(1);
    assert_eq!(index.take_write_batch(500).rows.len(), 3);
    index.init(0);
    index.apply(0, run("agents", "run-b", "d2", T0));
    index.apply(0, run("agents", "run-c", "d3", T0));
    assert_eq!(
        index.take_write_batch(500).rows.len(),
        0,
        "agents is relisting: wait"
    );
    assert_eq!(index.init_done(0), 1, "run-a gone");
    assert_eq!(index.runs(), 3, "run-b, run-c, and run-x (another watch) kept");
    // Every relisted run is written (again), which heals a claim pruned under it.
    assert_eq!(
        names(&index.take_write_batch(500).rows),
        [("run-b", true), ("run-c", true)]
    );
}

#[test]
fn runs_that_cannot_hold_a_claim_are_skipped_and_reported_once() {
    let mut index = listed(ClaimScope::Orchestration, vec![]);
    let nul = run_with("agents", "nul", "d1", "co\u{0}dex", T0);
    let skipped = index.apply(0, nul.clone());
    assert_eq!(
        skipped.map(|s| (s.name, s.rejection.reason)),
        Some(("nul".to_owned(), dedupe_store::RejectReason::InvalidOrchestration))
    );
    assert_eq!(index.apply(0, nul), None, "reported once");
    let long = run_with("agents", "long", "d2", &"a".repeat(3_000), T0);
    assert!(index.apply(0, long).is_some());
    assert!(index
        .apply(0, run("agents", "bad-label", "not a label value", T0))
        .is_some());
    assert_eq!(index.unwritten(), 0);
    index.apply(0, run("agents", "good", "d3", T0));
    assert_eq!(names(&index.take_write_batch(500).rows), [("good", true)]);
    // A relist does not report them again.
    index.init(0);
    assert_eq!(
        index.apply(0, run_with("agents", "nul", "d1", "co\u{0}dex", T0)),
        None
    );
    index.init_done(0);
    assert_eq!(index.runs(), 1, "long, bad-label and good were not relisted");
}

#[test]
fn keys_whose_watch_has_not_listed_wait() {
    let mut index = Index::new(ClaimScope::Orchestration, 2);
    index.init(0);
    index.init(1);
    index.apply(0, run("agents", "run-a", "d1", T0));
    index.apply(1, run("ci", "run-c", "d2", T0));
    index.init_done(0);
    assert_eq!(names(&index.take_write_batch(500).rows), [("run-a", true)]);
    assert_eq!(index.unwritten(), 1);
    assert!(!index.take_sync(), "ci has not listed");
    index.init_done(1);
    assert_eq!(names(&index.take_write_batch(500).rows), [("run-c", true)]);
    assert!(index.take_sync());
}

#[test]
fn batches_are_bounded_and_in_key_order() {
    let runs: Vec<_> = (0..1200)
        .rev()
        .map(|i| run("agents", &format!("r{i}"), &format!("d{i:05}"), T0))
        .collect();
    let mut index = listed(ClaimScope::Cluster, runs);
    let mut all = Vec::new();
    loop {
        let rows = index.take_write_batch(500).rows;
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 500);
        all.extend(rows.into_iter().map(|r| r.key.delivery_id));
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!((all.len(), all == sorted), (1200, true));
}

#[test]
fn uuids_are_stored_compactly_and_read_back_exactly() {
    for text in [
        "599aef04-af48-4dfe-9e63-c02ffc7d621d",
        "599AEF04-AF48-4DFE-9E63-C02FFC7D621D",
        "599aef04af484dfe9e63c02ffc7d621d",
        "d-1",
    ] {
        let id = CompactId::new(text);
        assert_eq!(id.to_text(), text);
        assert_eq!(matches!(id, CompactId::Uuid(_)), text.starts_with("599aef04-"));
    }
    let (a, b) = (
        CompactId::new("0fffffff-0000-4000-8000-000000000000"),
        CompactId::new("a0000000-0000-4000-8000-000000000000"),
    );
    assert_eq!(a.cmp_text(&b), Ordering::Less);
    assert_eq!(
        a.cmp_text(&CompactId::new("1")),
        "0fffffff-0000-4000-8000-000000000000".cmp("1")
    );
}

#[test]
fn interned_names_are_released_when_their_last_run_is_written_or_gone() {
    let mut index = listed(ClaimScope::Orchestration, vec![]);
    for i in 0..50 {
        index.apply(
            0,
            run_with(&format!("ns-{i}"), "r", &format!("d{i}"), &format!("o-{i}"), T0),
        );
    }
    index.apply(0, run_with("agents", "bad", "d", "Bad_Name", T0));
    assert_eq!(index.names.ids.len(), 1 + 50 * 2 + 1);
    let _ = index.take_write_batch(500);
    for i in 0..50 {
        index.delete(
            0,
            run_with(&format!("ns-{i}"), "r", &format!("d{i}"), &format!("o-{i}"), T0),
        );
    }
    index.delete(0, run_with("agents", "bad", "d", "Bad_Name", T0));
    assert_eq!((index.runs(), index.names.ids.len()), (0, 1), "only \"\" is left");
}

/// The index keeps per run a fixed-size entry and its short strings, never the object.
#[test]
fn an_entry_is_small() {
    assert!(
        std::mem::size_of::<Entry>() <= 88,
        "{}",
        std::mem::size_of::<Entry>()
    );
}
