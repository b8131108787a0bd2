//! Every SQL statement the project runs, in one place, each named for what it does. The
//! statements themselves are files in `shared/sql/` (one per statement, named after the
//! constant in lower case), compiled in with `include_str!`, so the benchmarks read exactly
//! the SQL the binaries run; their meaning and parameters are documented here.
//!
//! The hot-path statements (`CLAIM_INSERT`, `CLAIM_RETRY`, `CLAIM_BATCH`, `LOOKUP`, `TAKE_OVER`, `CONFIRM`) stay within what
//! PostgreSQL-compatible distributed engines accept (`INSERT … ON CONFLICT`, CTEs, no
//! `ctid`/`xmax`), so a multi-region store stays an option.
//!
//! Key parameters are always `$1 delivery_id, $2 scope, $3 namespace, $4 orchestration`.
//! Statements that return a claim return the columns `db::rows::read_claim` reads: `written`,
//! the holder (`run_namespace`, `run_name`, `run_uid`), `state`, `claimed_at`, `updated_at`,
//! `admissions`, `takeovers` and `observed_at` — `now()`, the database clock at the time of
//! the statement, so decisions about age never depend on the webhook pod's clock.

/// Read the claim for a key without writing (dry-run, and the fallback after [`CLAIM_INSERT`]).
pub const LOOKUP: &str = include_str!("../sql/lookup.sql");

/// Compare-and-swap a stale pending claim from its current holder to a new run.
/// `$5..$7` the expected holder (namespace, name, uid), `$8` its expected `updated_at`,
/// `$9` the grace period in seconds (re-checked here against the database clock),
/// `$10..$12` the new run. Exactly one of several concurrent take-overs matches.
pub const TAKE_OVER: &str = include_str!("../sql/take_over.sql");

/// Mark a pending claim confirmed if it is held by the run `$5/$6` (namespace/name).
/// Returns one row when the state changed.
pub const CONFIRM: &str = include_str!("../sql/confirm.sql");

/// Mark a pending claim confirmed whoever holds it (the take-over lookup found the holder
/// alive). Guarded on the holder so a concurrent take-over is not overwritten.
pub const CONFIRM_HOLDER: &str = include_str!("../sql/confirm_holder.sql");

/// The pruner's cutoff: the database clock minus the retention window, taken once.
pub const PRUNE_CUTOFF: &str = include_str!("../sql/prune_cutoff.sql");

/// Delete up to `$3` claims with `$1 <= claimed_at < $2`, oldest first, key by key,
/// skipping rows a concurrent admission holds locked. `$1` lets the pruner carry its position forward so a
/// batch does not re-walk the dead index entries the previous batches left behind.
/// Returns the count deleted and the newest `claimed_at` among them.
pub const DELETE_EXPIRED_KEYS: &str = include_str!("../sql/delete_expired_keys.sql");

/// Dry-run and progress estimate: how many claims are older than `$1`, and the oldest.
pub const COUNT_EXPIRED: &str = include_str!("../sql/count_expired.sql");

/// Readiness probe: a round trip to the store.
pub const PING: &str = include_str!("../sql/ping.sql");

/// Serialises migrations across processes; released at transaction end. The lock is per
/// claims table: `$1` is a fixed class, the second half hashes database and schema, so
/// stores in different schemas (tests, tenants) never wait for each other.
pub const MIGRATION_LOCK: &str = include_str!("../sql/migration_lock.sql");

/// Lifts the session's `statement_timeout` for a migration, which may wait for another
/// replica's migration lock longer than any store call may take.
pub const STATEMENT_TIMEOUT_OFF: &str = include_str!("../sql/statement_timeout_off.sql");

/// Restores the session's `statement_timeout` (the connection's own) after a migration.
pub const STATEMENT_TIMEOUT_RESET: &str = include_str!("../sql/statement_timeout_reset.sql");

/// Keeps the migration transaction's NOTICEs out of the logs.
pub const MIGRATION_QUIET_NOTICES: &str = include_str!("../sql/migration_quiet_notices.sql");

/// The migration history table; created under the migration lock.
pub const MIGRATION_HISTORY_CREATE: &str = include_str!("../sql/migration_history_create.sql");

/// Versions already applied.
pub const MIGRATION_HISTORY_LIST: &str = include_str!("../sql/migration_history_list.sql");

/// Record one applied migration.
pub const MIGRATION_HISTORY_RECORD: &str = include_str!("../sql/migration_history_record.sql");

/// Only one pruner at a time: a session-level lock held for the pruner's whole run, per
/// claims table (same key shape as [`MIGRATION_LOCK`]). Released when the session ends.
pub const PRUNER_TRY_LOCK: &str = include_str!("../sql/pruner_try_lock.sql");

/// Per-transaction bounds for one prune batch. Values are integers formatted here, never
/// user text (`SET` takes no bind parameters).
pub fn set_local_timeouts(statement_timeout_ms: u64, lock_timeout_ms: u64) -> String {
    format!(
        "SET LOCAL statement_timeout = {statement_timeout_ms}; SET LOCAL lock_timeout = {lock_timeout_ms}"
    )
}

/// The prune batch's bound: the (`$3`+1)-th oldest `claimed_at` with `$1 <= claimed_at < $2`,
/// found through the `claimed_at` index (an index-only scan); no row when the range holds
/// `$3` claims or fewer. [`DELETE_EXPIRED_RANGE`] then deletes below it, in the same
/// transaction.
pub const PRUNE_RANGE_BOUND: &str = include_str!("../sql/prune_range_bound.sql");

/// Delete every claim with `$1 <= claimed_at < $2`: a prune batch, `$2` being the lower of the
/// cutoff and [`PRUNE_RANGE_BOUND`], so at most N rows go (a claim committed between the two
/// statements with an older `claimed_at` would go too: it is expired as well, the bound only
/// sizes the transaction). Found through the `claimed_at` index and deleted in place, with
/// none of [`DELETE_EXPIRED_KEYS`]'s per-row primary-key lookups, and no `RETURNING`: the
/// count is the command's row count, and the next batch starts at the bound. (The single
/// statement it replaced returned every deleted `claimed_at` to count them and find the
/// newest, which cost as much again as the delete.)
///
/// Unlike [`DELETE_EXPIRED_KEYS`] it does not skip locked rows: it waits (bounded by the
/// batch's `lock_timeout`) for an admission statement holding one, and READ COMMITTED then
/// re-checks the range on the row's new version, so a claim renewed meanwhile (take-over)
/// is not deleted. Admission statements lock one row each, so no deadlock cycle can form.
/// When more than N claims share the oldest `claimed_at`, the bound is that timestamp and
/// nothing is deleted: the caller falls back to [`DELETE_EXPIRED_KEYS`] for that batch.
pub const DELETE_EXPIRED_RANGE: &str = include_str!("../sql/delete_expired_range.sql");

/// Claim a key: insert a pending claim, or — when the key is taken — return the holder as it
/// is, in the same round trip. `written` is true when this statement inserted the row.
///
/// `ON CONFLICT DO NOTHING` never locks the holder's row (unlike `DO UPDATE … WHERE`, which
/// locks it even when its `WHERE` fails), so answering a duplicate is a read: concurrent
/// redeliveries of one delivery do not queue on one row, and a transaction that wrote
/// nothing commits without a WAL flush. A retried create of the same pending run is
/// recorded by [`CLAIM_RETRY`] afterwards. If the holder committed after this statement's
/// snapshot was taken, the fallback SELECT cannot see it and no row comes back: the caller
/// then runs [`LOOKUP`] (a new statement, a new snapshot).
pub const CLAIM_INSERT: &str = include_str!("../sql/claim_insert.sql");

/// A retried create: the key's pending claim is held by the same run (namespace/name
/// `$5/$6`); count the admission and keep the first create's uid (the API server refuses a
/// retry whose name exists, so the retry's uid would name no run; [`CLAIM_RETRY_UID`]
/// records it when the API server shows no run of that name). Returns nothing when the
/// claim changed since it was read (confirmed, taken over, pruned): the caller starts over
/// with [`CLAIM_INSERT`].
pub const CLAIM_RETRY: &str = include_str!("../sql/claim_retry.sql");

/// A retried create that makes the run (the API server showed none of that name): record
/// its uid `$7` on the pending claim held by namespace/name `$5/$6`. Returns the uid when it
/// did.
pub const CLAIM_RETRY_UID: &str = include_str!("../sql/claim_retry_uid.sql");

/// Group commit ([`crate::group_commit`]): [`CLAIM_INSERT`] for many keys in one statement
/// and one transaction. `$1..$7` are parallel text arrays (delivery id, scope, namespace,
/// orchestration, run namespace, run name, run uid), one element per distinct key, sorted
/// by key so concurrent batches wait on each other's keys in one order and cannot deadlock.
/// `$8` is the statement's `lock_timeout` (text, e.g. `50ms`): a key whose row another
/// session holds fails the batch with 55P03 instead of holding every claim in it.
/// Returns one row per input element, `ord` its 1-based position; an element without a row
/// lost to a holder this statement's snapshot cannot see (the caller runs [`LOOKUP`]).
pub const CLAIM_BATCH: &str = include_str!("../sql/claim_batch.sql");

/// The pruner's adaptive pacing (`pruner/src/pacing.rs`): the claims primary key's
/// cumulative `idx_scan` (every keyed claim statement uses it; the pruner's range deletes
/// do not), and how many other sessions touched the claims table since `$1` (the previous
/// sample; the last second when NULL) or are doing so now, in this database (any schema:
/// the conservative side), not counting sessions named
/// `$2` (the pruner's own application_name).
pub const PRUNE_CLAIM_TRAFFIC: &str = include_str!("../sql/prune_claim_traffic.sql");

/// The reconciler's batch: confirm pending claims whose runs the API server shows, and
/// back-fill a confirmed claim for each key that has none. Parameters and reasoning in the
/// file.
pub const RECONCILE_BATCH: &str = include_str!("../sql/reconcile_batch.sql");

/// The operators' reads and release (`inspect.rs`, `dedupe-claims`). The claims of one delivery (`$1`), filtered by key parts when `$2..$4` are not NULL:
/// `get` (no filter) and a release's preview.
pub const INSPECT_CLAIMS_OF_DELIVERY: &str = include_str!("../sql/inspect_claims_of_delivery.sql");
/// Claims newest first, filtered (see the file for the parameters).
pub const INSPECT_LIST_CLAIMS: &str = include_str!("../sql/inspect_list_claims.sql");
/// [`INSPECT_CLAIMS_OF_DELIVERY`]'s selection, locked, inside the release transaction.
pub const INSPECT_RELEASE_LOCK: &str = concat!(
    include_str!("../sql/inspect_claims_of_delivery.sql"),
    "   FOR UPDATE\n"
);
/// Deletes the one key the lock found.
pub const INSPECT_RELEASE_DELETE: &str = include_str!("../sql/inspect_release_delete.sql");
/// Counts by scope and state.
pub const INSPECT_STATS_BY_SCOPE_STATE: &str = include_str!("../sql/inspect_stats_by_scope_state.sql");
/// Totals, backlog, table size and schema version.
pub const INSPECT_STATS_SUMMARY: &str = include_str!("../sql/inspect_stats_summary.sql");
/// The oldest claim.
pub const INSPECT_STATS_OLDEST: &str = include_str!("../sql/inspect_stats_oldest.sql");

/// The claim columns of many claims as parallel text arrays: `$1..$7` of the statements that
/// `unnest` them ([`CLAIM_BATCH`], [`RECONCILE_BATCH`]), in the order delivery id, scope, key
/// namespace, key orchestration, run namespace, run name, run uid. Borrowed from the claims,
/// so building a batch's parameters copies no string.
#[derive(Debug, Default)]
pub(crate) struct ClaimColumns<'a> {
    delivery_id: Vec<&'a str>,
    scope: Vec<&'a str>,
    namespace: Vec<&'a str>,
    orchestration: Vec<&'a str>,
    run_namespace: Vec<&'a str>,
    run_name: Vec<&'a str>,
    run_uid: Vec<&'a str>,
}

impl<'a> ClaimColumns<'a> {
    /// Appends one claim: its key and the run it names.
    pub(crate) fn push(&mut self, key: &'a crate::ClaimKey, namespace: &'a str, name: &'a str, uid: &'a str) {
        self.delivery_id.push(&key.delivery_id);
        self.scope.push(key.scope.as_str());
        self.namespace.push(&key.namespace);
        self.orchestration.push(&key.orchestration);
        self.run_namespace.push(namespace);
        self.run_name.push(name);
        self.run_uid.push(uid);
    }

    /// `$1..$7`.
    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.delivery_id,
            &self.scope,
            &self.namespace,
            &self.orchestration,
            &self.run_namespace,
            &self.run_name,
            &self.run_uid,
        ]
    }
}
