//! Reading and releasing claims for operators (`dedupe-claims`): every claim of a delivery,
//! a filtered list, releasing exactly one claim, and the table's figures. Each statement is
//! named in [`crate::sql`] (`INSPECT_*`); each call is bounded by the store timeout.
//!
//! Nothing here is on the webhook's hot path. The one write, [`ClaimStore::release_claim`],
//! locks what it matches and deletes only when that is exactly one row, in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::claim::{Claim, ClaimKey, ClaimScope, ClaimState};
use crate::db::rows::{parse_scope, parse_state, read_claim_columns, read_count, read_key};
use crate::error::StoreError;
use crate::sql;
use crate::store::ClaimStore;

/// A claim with its key, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    pub key: ClaimKey,
    pub claim: Claim,
}

impl ClaimRecord {
    /// Time since the holder claimed the key, by the database clock.
    pub fn age(&self) -> chrono::Duration {
        self.claim.observed_at - self.claim.claimed_at
    }

    /// When the pruner may delete this claim: `claimed_at` plus the retention window (the
    /// first pruner run after this time removes it).
    pub fn prunable_after(&self, retention_days: u32) -> DateTime<Utc> {
        // A row written by hand can carry any timestamp: saturate instead of overflowing.
        self.claim
            .claimed_at
            .checked_add_signed(chrono::Duration::days(i64::from(retention_days)))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// A pending claim idle longer than the grace period: the next create of the delivery
    /// takes it over if its run does not exist.
    pub fn pending_past_grace(&self, grace: Duration) -> bool {
        self.claim.state == ClaimState::Pending
            && chrono::Duration::from_std(grace).is_ok_and(|grace| self.claim.idle_for() > grace)
    }
}

/// What `list` shows. `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<ClaimState>,
    /// Only claims whose `claimed_at` is older than this.
    pub older_than: Option<Duration>,
    /// The run's namespace (recorded in every scope).
    pub run_namespace: Option<String>,
    /// The key's orchestration (recorded only in scope `orchestration`).
    pub orchestration: Option<String>,
    /// At most this many claims.
    pub limit: u32,
    /// Start after this row (the previous page's [`ClaimList::next`]).
    pub after: Option<ListCursor>,
}

/// Where a page of `list` ended: the last row's position in the list's order
/// (`claimed_at` descending, then the key), so the next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub claimed_at: DateTime<Utc>,
    pub key: ClaimKey,
}

/// One page of `list`, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimList {
    pub claims: Vec<ClaimRecord>,
    /// More claims matched than the limit let through.
    pub truncated: bool,
    /// Where the next page starts, when `truncated`.
    pub next: Option<ListCursor>,
}

/// Which claims of a delivery a release means. `None` fields match anything; a key part the
/// scope does not use is `''` (scope `cluster` has namespace `''`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySelector {
    pub scope: Option<ClaimScope>,
    pub namespace: Option<String>,
    pub orchestration: Option<String>,
}

/// What a release found (and, with `Released`, deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Exactly one claim matched and was deleted (committed).
    Released(ClaimRecord),
    /// Nothing matched; nothing deleted.
    NotFound,
    /// More than one claim matched; nothing deleted.
    Ambiguous(Vec<ClaimRecord>),
}

/// One group of the stats: claims of one scope in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeStateCount {
    pub scope: ClaimScope,
    pub state: ClaimState,
    pub claims: u64,
    pub oldest: DateTime<Utc>,
}

/// The claims table's figures, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimStats {
    pub observed_at: DateTime<Utc>,
    pub total: u64,
    pub by_scope_state: Vec<ScopeStateCount>,
    pub oldest: Option<ClaimRecord>,
    pub retention_days: u32,
    /// Claims older than the retention window: what the next pruner run deletes.
    pub past_retention: u64,
    pub pending_grace: Duration,
    /// Pending claims idle longer than the grace period.
    pub pending_past_grace: u64,
    /// Table, indexes and TOAST, in bytes.
    pub table_bytes: u64,
    /// The newest applied migration (`None` when the history is empty).
    pub migration_version: Option<i32>,
}

impl ClaimStore {
    /// Every claim of `delivery_id`, in any scope (empty when none).
    pub async fn claims_of_delivery(&self, delivery_id: &str) -> Result<Vec<ClaimRecord>, StoreError> {
        self.release_preview(delivery_id, &KeySelector::default()).await
    }

    /// Claims matching `filter`, newest first, at most `filter.limit`.
    pub async fn list_claims(&self, filter: &ListFilter) -> Result<ClaimList, StoreError> {
        let state = filter.state.map(ClaimState::as_str);
        let older_than = filter.older_than.map(|d| d.as_secs_f64());
        // One more than shown, to know whether the limit cut the list.
        let fetch = i64::from(filter.limit) + 1;
        let after = filter.after.as_ref();
        let after_at = after.map(|c| c.claimed_at);
        let after_delivery = after.map(|c| c.key.delivery_id.as_str());
        let after_scope = after.map(|c| c.key.scope.as_str());
        let after_namespace = after.map(|c| c.key.namespace.as_str());
        let after_orchestration = after.map(|c| c.key.orchestration.as_str());
        let params: [&(dyn ToSql + Sync); 10] = [
            &state,
            &older_than,
            &filter.run_namespace,
            &filter.orchestration,
            &fetch,
            &after_at,
            &after_delivery,
            &after_scope,
            &after_namespace,
            &after_orchestration,
        ];
        let mut claims = self
            .db()
            .on_connection(self.timeout(), async |client| {
                let statement = client.prepare_cached(sql::INSPECT_LIST_CLAIMS).await?;
                read_records(&client.query(&statement, &params).await?)
            })
            .await?;
        let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
        let truncated = claims.len() > limit;
        claims.truncate(limit);
        let next = claims.last().filter(|_| truncated).map(|r| ListCursor {
            claimed_at: r.claim.claimed_at,
            key: r.key.clone(),
        });
        Ok(ClaimList {
            claims,
            truncated,
            next,
        })
    }

    /// The claims of `delivery_id` that `selector` picks, without writing (what a release
    /// would delete).
    pub async fn release_preview(
        &self,
        delivery_id: &str,
        selector: &KeySelector,
    ) -> Result<Vec<ClaimRecord>, StoreError> {
        let scope = selector.scope.map(ClaimScope::as_str);
        let params: [&(dyn ToSql + Sync); 4] =
            [&delivery_id, &scope, &selector.namespace, &selector.orchestration];
        self.db()
            .on_connection(self.timeout(), async |client| {
                let statement = client.prepare_cached(sql::INSPECT_CLAIMS_OF_DELIVERY).await?;
                read_records(&client.query(&statement, &params).await?)
            })
            .await
    }

    /// Deletes the one claim of `delivery_id` that `selector` picks, in one transaction:
    /// lock the matches, delete only if there is exactly one, commit. With none or several
    /// matches nothing is deleted (the transaction rolls back).
    pub async fn release_claim(
        &self,
        delivery_id: &str,
        selector: &KeySelector,
    ) -> Result<ReleaseOutcome, StoreError> {
        let scope = selector.scope.map(ClaimScope::as_str);
        let params: [&(dyn ToSql + Sync); 4] =
            [&delivery_id, &scope, &selector.namespace, &selector.orchestration];
        self.db()
            .on_connection(self.timeout(), async |client| {
                let tx = client.transaction().await?;
                let matched = read_records(&tx.query(sql::INSPECT_RELEASE_LOCK, &params).await?)?;
                let key = match matched.as_slice() {
                    [] => return Ok(ReleaseOutcome::NotFound),
                    [one] => one.key.clone(),
                    // Dropping the transaction rolls it back and releases the locks.
                    _ => return Ok(ReleaseOutcome::Ambiguous(matched)),
                };
                let scope = key.scope.as_str();
                let deleted = read_records(
                    &tx.query(
                        sql::INSPECT_RELEASE_DELETE,
                        &[&key.delivery_id, &scope, &key.namespace, &key.orchestration],
                    )
                    .await?,
                )?;
                let [record] = <[ClaimRecord; 1]>::try_from(deleted).map_err(|rows| {
                    StoreError::UnexpectedRow(format!(
                        "deleting the locked claim {key} returned {} rows",
                        rows.len()
                    ))
                })?;
                tx.commit().await?;
                Ok(ReleaseOutcome::Released(record))
            })
            .await
    }

    /// The table's figures, all from one snapshot (a read-only repeatable-read transaction),
    /// so the counts agree with each other.
    pub async fn claim_stats(
        &self,
        retention_days: u32,
        pending_grace: Duration,
    ) -> Result<ClaimStats, StoreError> {
        let days = i32::try_from(retention_days).map_err(|_| {
            StoreError::Query(format!("retention of {retention_days} days is out of range").into())
        })?;
        let grace_secs = pending_grace.as_secs_f64();
        self.db()
            .on_connection(self.timeout(), async |client| {
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let summary = tx
                    .query_one(sql::INSPECT_STATS_SUMMARY, &[&days, &grace_secs])
                    .await?;
                let groups = tx.query(sql::INSPECT_STATS_BY_SCOPE_STATE, &[]).await?;
                let oldest = read_records(&tx.query(sql::INSPECT_STATS_OLDEST, &[]).await?)?;
                tx.commit().await?;
                Ok(ClaimStats {
                    observed_at: summary.try_get("observed_at")?,
                    total: count(&summary, "total")?,
                    by_scope_state: groups
                        .iter()
                        .map(|row| {
                            Ok(ScopeStateCount {
                                scope: parse_scope(row.try_get("scope")?)?,
                                state: parse_state(row.try_get("state")?)?,
                                claims: count(row, "claims")?,
                                oldest: row.try_get("oldest")?,
                            })
                        })
                        .collect::<Result<_, StoreError>>()?,
                    oldest: oldest.into_iter().next(),
                    retention_days,
                    past_retention: count(&summary, "past_retention")?,
                    pending_grace,
                    pending_past_grace: count(&summary, "pending_past_grace")?,
                    table_bytes: count(&summary, "table_bytes")?,
                    migration_version: summary.try_get("migration_version")?,
                })
            })
            .await
    }
}

fn read_records(rows: &[Row]) -> Result<Vec<ClaimRecord>, StoreError> {
    rows.iter().map(read_record).collect()
}

fn read_record(row: &Row) -> Result<ClaimRecord, StoreError> {
    Ok(ClaimRecord {
        key: read_key(row)?,
        claim: read_claim_columns(row)?,
    })
}

/// A `bigint` count or size, never negative.
fn count(row: &Row, column: &str) -> Result<u64, StoreError> {
    read_count(row, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claim::RunRef;

    fn record(state: ClaimState, claimed_secs_ago: i64, idle_secs: i64) -> ClaimRecord {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("a valid timestamp");
        ClaimRecord {
            key: ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", "d1"),
            claim: Claim {
                holder: RunRef {
                    namespace: "agents".into(),
                    name: "codex-x".into(),
                    uid: "u".into(),
                },
                state,
                claimed_at: now - chrono::Duration::seconds(claimed_secs_ago),
                updated_at: now - chrono::Duration::seconds(idle_secs),
                admissions: 0,
                takeovers: 0,
                observed_at: now,
            },
        }
    }

    #[test]
    fn prunable_after_adds_the_retention_to_claimed_at() {
        let r = record(ClaimState::Confirmed, 3600, 10);
        assert_eq!(r.age(), chrono::Duration::hours(1));
        assert_eq!(
            r.prunable_after(7) - r.claim.claimed_at,
            chrono::Duration::days(7)
        );
    }

    #[test]
    fn only_a_pending_claim_idle_past_the_grace_counts() {
        let grace = Duration::from_secs(120);
        assert!(record(ClaimState::Pending, 500, 121).pending_past_grace(grace));
        assert!(!record(ClaimState::Pending, 500, 120).pending_past_grace(grace));
        assert!(!record(ClaimState::Confirmed, 500, 500).pending_past_grace(grace));
    }

    #[test]
    fn every_statement_is_loaded() {
        for sql in [
            sql::INSPECT_CLAIMS_OF_DELIVERY,
            sql::INSPECT_LIST_CLAIMS,
            sql::INSPECT_RELEASE_LOCK,
            sql::INSPECT_RELEASE_DELETE,
            sql::INSPECT_STATS_BY_SCOPE_STATE,
            sql::INSPECT_STATS_SUMMARY,
            sql::INSPECT_STATS_OLDEST,
        ] {
            assert!(sql.contains("orchestration_dedupe_claims"), "{sql}");
        }
        assert!(
            sql::INSPECT_RELEASE_LOCK.trim_end().ends_with("FOR UPDATE"),
            "{}",
            sql::INSPECT_RELEASE_LOCK
        );
    }
}
