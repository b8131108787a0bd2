//! Reading the rows the claim statements return (the columns `sql.rs` lists for them).

use tokio_postgres::Row;

use crate::claim::{Claim, ClaimKey, ClaimScope, ClaimState, RunRef};
use crate::error::StoreError;

/// `(written, claim)` from a row of the claim statements (`written`, the holder, `state`,
/// the times and counters).
pub(crate) fn read_claim(row: &Row) -> Result<(bool, Claim), StoreError> {
    Ok((row.try_get("written")?, read_claim_columns(row)?))
}

/// The claim's own columns, without `written`.
pub(crate) fn read_claim_columns(row: &Row) -> Result<Claim, StoreError> {
    Ok(Claim {
        holder: RunRef {
            namespace: row.try_get("run_namespace")?,
            name: row.try_get("run_name")?,
            uid: row.try_get("run_uid")?,
        },
        state: parse_state(row.try_get("state")?)?,
        claimed_at: row.try_get("claimed_at")?,
        updated_at: row.try_get("updated_at")?,
        admissions: row.try_get("admissions")?,
        takeovers: row.try_get("takeovers")?,
        observed_at: row.try_get("observed_at")?,
    })
}

/// The key columns (`delivery_id`, `scope`, `namespace`, `orchestration`).
pub(crate) fn read_key(row: &Row) -> Result<ClaimKey, StoreError> {
    Ok(ClaimKey {
        delivery_id: row.try_get("delivery_id")?,
        scope: parse_scope(row.try_get("scope")?)?,
        namespace: row.try_get("namespace")?,
        orchestration: row.try_get("orchestration")?,
    })
}

pub(crate) fn parse_scope(scope: &str) -> Result<ClaimScope, StoreError> {
    scope
        .parse()
        .map_err(|_| StoreError::UnexpectedRow(format!("scope `{scope}`")))
}

pub(crate) fn parse_state(state: &str) -> Result<ClaimState, StoreError> {
    ClaimState::parse(state).ok_or_else(|| StoreError::UnexpectedRow(format!("state `{state}`")))
}

/// A `bigint` count or size, never negative.
pub(crate) fn read_count(row: &Row, column: &str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| StoreError::UnexpectedRow(format!("{column} = {value}")))
}

/// A `bigint` count, a negative one read as 0 (the counts the pruner and the reconciler
/// read cannot be negative; no error is worth failing their run over).
pub(crate) fn read_count_lenient(row: &Row, column: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.try_get::<_, i64>(column)?).unwrap_or(0))
}
