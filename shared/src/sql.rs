//! Every SQL statement the project runs, in one place, each named for what it does.
//!
//! The hot-path statements (`CLAIM`, `LOOKUP`, `TAKE_OVER`, `CONFIRM`) stay within what
//! PostgreSQL-compatible distributed engines accept (`INSERT … ON CONFLICT`, CTEs, no
//! `ctid`/`xmax`), so a multi-region store stays an option.
//!
//! Key parameters are always `$1 delivery_id, $2 scope, $3 namespace, $4 orchestration`.

/// Columns returned for a claim row, in the order `ClaimRow::from_row` reads them.
/// `now()` is the database clock at the time of the statement, so decisions about age
/// never depend on the webhook pod's clock.
macro_rules! claim_columns {
    ($t:literal) => {
        concat!(
            $t,
            ".run_namespace, ",
            $t,
            ".run_name, ",
            $t,
            ".run_uid, ",
            $t,
            ".state, ",
            $t,
            ".claimed_at, ",
            $t,
            ".updated_at, ",
            $t,
            ".admissions, ",
            $t,
            ".takeovers, now() AS observed_at"
        )
    };
}

/// Insert a pending claim; if the key is taken by the *same run* (namespace/name) that is
/// still pending, record the new uid (a retried create). Otherwise return the holder as it
/// is, in the same round trip.
///
/// `written` is true when this statement inserted or touched the row; then `admissions`
/// tells which (0 = inserted). If the holder committed after this statement's snapshot was
/// taken, the fallback SELECT cannot see it and no row comes back: the caller then runs
/// [`LOOKUP`] (a new statement, a new snapshot).
pub const CLAIM: &str = concat!(
    "WITH attempt AS (
        INSERT INTO orchestration_dedupe_claims AS c
            (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
        ON CONFLICT (delivery_id, scope, namespace, orchestration) DO UPDATE
            SET run_uid = EXCLUDED.run_uid, updated_at = now(), admissions = c.admissions + 1
            WHERE c.state = 'pending'
              AND c.run_namespace = EXCLUDED.run_namespace
              AND c.run_name = EXCLUDED.run_name
        RETURNING c.*
    )
    SELECT true AS written, ",
    claim_columns!("a"),
    " FROM attempt a
    UNION ALL
    SELECT false AS written, ",
    claim_columns!("h"),
    " FROM orchestration_dedupe_claims h
    WHERE h.delivery_id = $1 AND h.scope = $2 AND h.namespace = $3 AND h.orchestration = $4
      AND NOT EXISTS (SELECT 1 FROM attempt)"
);

/// Read the claim for a key without writing (dry-run, and the fallback after [`CLAIM`]).
pub const LOOKUP: &str = concat!(
    "SELECT false AS written, ",
    claim_columns!("h"),
    " FROM orchestration_dedupe_claims h
    WHERE h.delivery_id = $1 AND h.scope = $2 AND h.namespace = $3 AND h.orchestration = $4"
);

/// Compare-and-swap a stale pending claim from its current holder to a new run.
/// `$5..$7` the expected holder (namespace, name, uid), `$8` its expected `updated_at`,
/// `$9` the grace period in seconds (re-checked here against the database clock),
/// `$10..$12` the new run. Exactly one of several concurrent take-overs matches.
pub const TAKE_OVER: &str = concat!(
    "UPDATE orchestration_dedupe_claims c
        SET run_namespace = $10, run_name = $11, run_uid = $12, state = 'pending',
            claimed_at = now(), updated_at = now(), admissions = 0, takeovers = c.takeovers + 1
      WHERE c.delivery_id = $1 AND c.scope = $2 AND c.namespace = $3 AND c.orchestration = $4
        AND c.state = 'pending'
        AND c.run_namespace = $5 AND c.run_name = $6 AND c.run_uid = $7
        AND c.updated_at = $8
        AND c.updated_at <= now() - make_interval(secs => $9)
    RETURNING true AS written, ",
    claim_columns!("c")
);

/// Mark a pending claim confirmed if it is held by the run `$5/$6` (namespace/name).
/// Returns one row when the state changed.
pub const CONFIRM: &str = "UPDATE orchestration_dedupe_claims c
        SET state = 'confirmed', updated_at = now()
      WHERE c.delivery_id = $1 AND c.scope = $2 AND c.namespace = $3 AND c.orchestration = $4
        AND c.state = 'pending' AND c.run_namespace = $5 AND c.run_name = $6
    RETURNING c.run_uid";

/// Mark a pending claim confirmed whoever holds it (the take-over lookup found the holder
/// alive). Guarded on the holder so a concurrent take-over is not overwritten.
pub const CONFIRM_HOLDER: &str = "UPDATE orchestration_dedupe_claims c
        SET state = 'confirmed', updated_at = now()
      WHERE c.delivery_id = $1 AND c.scope = $2 AND c.namespace = $3 AND c.orchestration = $4
        AND c.state = 'pending' AND c.run_namespace = $5 AND c.run_name = $6 AND c.run_uid = $7
    RETURNING c.run_uid";

/// The pruner's cutoff: the database clock minus the retention window, taken once.
pub const PRUNE_CUTOFF: &str = "SELECT now() - make_interval(days => $1) AS cutoff, now() AS observed_at";

/// Delete up to `$3` claims with `$1 <= claimed_at < $2`, oldest first, skipping rows a
/// concurrent admission holds locked. `$1` lets the pruner carry its position forward so a
/// batch does not re-walk the dead index entries the previous batches left behind.
/// Returns the count deleted and the newest `claimed_at` among them.
pub const DELETE_EXPIRED_BATCH: &str = "WITH doomed AS (
        SELECT delivery_id, scope, namespace, orchestration
          FROM orchestration_dedupe_claims
         WHERE claimed_at >= $1 AND claimed_at < $2
         ORDER BY claimed_at
         LIMIT $3
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM orchestration_dedupe_claims c
         USING doomed d
         WHERE c.delivery_id = d.delivery_id AND c.scope = d.scope
           AND c.namespace = d.namespace AND c.orchestration = d.orchestration
        RETURNING c.claimed_at
    )
    SELECT count(*) AS deleted, max(claimed_at) AS newest FROM gone";

/// Dry-run and progress estimate: how many claims are older than `$1`, and the oldest.
pub const COUNT_EXPIRED: &str = "SELECT count(*) AS expired, min(claimed_at) AS oldest
      FROM orchestration_dedupe_claims WHERE claimed_at < $1";

/// Readiness probe: a round trip to the store.
pub const PING: &str = "SELECT 1";

/// Serialises migrations across processes; released at transaction end. The lock is per
/// claims table: `$1` is a fixed class, the second half hashes database and schema, so
/// stores in different schemas (tests, tenants) never wait for each other.
pub const MIGRATION_LOCK: &str =
    "SELECT pg_advisory_xact_lock($1, hashtext(current_database() || '.' || current_schema()))";

/// Keeps the migration transaction's NOTICEs out of the logs.
pub const MIGRATION_QUIET_NOTICES: &str = "SET LOCAL client_min_messages = warning";

/// The migration history table; created under the migration lock.
pub const MIGRATION_HISTORY_CREATE: &str = "CREATE TABLE IF NOT EXISTS orchestration_dedupe_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )";

/// Versions already applied.
pub const MIGRATION_HISTORY_LIST: &str = "SELECT version FROM orchestration_dedupe_migrations";

/// Record one applied migration.
pub const MIGRATION_HISTORY_RECORD: &str =
    "INSERT INTO orchestration_dedupe_migrations (version, name) VALUES ($1, $2)";

/// Only one pruner at a time: a session-level lock held for the pruner's whole run, per
/// claims table (same key shape as [`MIGRATION_LOCK`]). Released when the session ends.
pub const PRUNER_TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock($1, hashtext(current_database() || '.' || current_schema()))";

/// Per-transaction bounds for one prune batch. Values are integers formatted here, never
/// user text (`SET` takes no bind parameters).
pub fn set_local_timeouts(statement_timeout_ms: u64, lock_timeout_ms: u64) -> String {
    format!(
        "SET LOCAL statement_timeout = {statement_timeout_ms}; SET LOCAL lock_timeout = {lock_timeout_ms}"
    )
}

/// The pruner's batch, deleting by `claimed_at` range instead of key by key: up to `$3`
/// claims with `$1 <= claimed_at < $2`, oldest first. The bound is the `claimed_at` of the
/// (`$3`+1)-th oldest such claim and only claims strictly before it go, so a batch never
/// exceeds `$3` rows; they are found through the `claimed_at` index and deleted in place,
/// with none of [`DELETE_EXPIRED_BATCH`]'s per-row primary-key lookups (about 5x cheaper
/// per row on the pruner benchmark, docs/BENCHMARKS.md).
///
/// Unlike [`DELETE_EXPIRED_BATCH`] it does not skip locked rows: it waits (bounded by the
/// batch's `lock_timeout`) for an admission statement holding one, and READ COMMITTED then
/// re-checks the range on the row's new version, so a claim renewed meanwhile (take-over)
/// is not deleted. Admission statements lock one row each, so no deadlock cycle can form.
///
/// Returns the count deleted, the newest `claimed_at` among them, and `more`: whether
/// claims at or past the bound are left in the range. `more` with nothing deleted means
/// more than `$3` claims share the oldest `claimed_at`; the caller then falls back to
/// [`DELETE_EXPIRED_BATCH`] for that batch.
pub const DELETE_EXPIRED_RANGE: &str = "WITH bound AS (
        SELECT claimed_at
          FROM orchestration_dedupe_claims
         WHERE claimed_at >= $1 AND claimed_at < $2
         ORDER BY claimed_at
        OFFSET $3 LIMIT 1
    ), gone AS (
        DELETE FROM orchestration_dedupe_claims
         WHERE claimed_at >= $1 AND claimed_at < $2
           AND claimed_at < COALESCE((SELECT claimed_at FROM bound), $2)
        RETURNING claimed_at
    )
    SELECT count(*) AS deleted, max(claimed_at) AS newest, EXISTS (SELECT 1 FROM bound) AS more
      FROM gone";

/// The reconciler's batch: confirm pending claims whose runs the API server shows, and
/// back-fill a confirmed claim for each key that has none. Parameters and reasoning in the
/// file.
pub const RECONCILE_BATCH: &str = include_str!("../sql/reconcile_batch.sql");
