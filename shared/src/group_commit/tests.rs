use super::*;
use crate::claim::ClaimScope;

fn key(d: &str) -> ClaimKey {
    ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", d)
}

fn config() -> GroupCommitConfig {
    GroupCommitConfig {
        max_batch: 64,
        in_flight: 4,
        linger: Duration::from_millis(1),
    }
}

#[test]
fn with_nothing_in_flight_whatever_is_queued_goes_at_once() {
    let c = config();
    assert_eq!(next_claim_batch(&c, 1, 0, Duration::ZERO), Some(1));
    assert_eq!(
        next_claim_batch(&c, 100, 0, Duration::ZERO),
        Some(64),
        "at most max_batch"
    );
    assert_eq!(next_claim_batch(&c, 0, 0, Duration::ZERO), None);
}

#[test]
fn beside_running_batches_a_batch_starts_only_when_full_or_lingered() {
    let c = config();
    assert_eq!(next_claim_batch(&c, 63, 1, Duration::from_micros(999)), None);
    assert_eq!(next_claim_batch(&c, 64, 1, Duration::ZERO), Some(64));
    assert_eq!(next_claim_batch(&c, 1, 3, Duration::from_millis(1)), Some(1));
}

#[test]
fn never_more_batches_in_flight_than_configured() {
    let c = config();
    assert_eq!(next_claim_batch(&c, 64, 4, Duration::from_secs(1)), None);
}

#[test]
fn distinct_keys_are_sent_sorted_and_each_answered_by_its_own_element() {
    let (b, a, c) = (key("b"), key("a"), key("c"));
    let plan = plan_claim_batch(&[&b, &a, &c]);
    assert_eq!(plan.sent, vec![1, 0, 2]);
    assert_eq!(plan.answered_by, vec![(1, true), (0, true), (2, true)]);
}

#[test]
fn a_repeated_key_is_sent_once_and_its_later_requests_see_the_first_ones_outcome() {
    let (a, b) = (key("a"), key("b"));
    let plan = plan_claim_batch(&[&b, &a, &b, &b]);
    assert_eq!(plan.sent, vec![1, 0]);
    assert_eq!(
        plan.answered_by,
        vec![(1, true), (0, true), (1, false), (1, false)]
    );
}

#[test]
fn the_same_delivery_under_another_scope_is_another_key() {
    let a = key("a");
    let b = ClaimKey::new(ClaimScope::Cluster, "agents", "codex", "a");
    assert_eq!(plan_claim_batch(&[&a, &b]).sent.len(), 2);
}
