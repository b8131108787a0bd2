-- dedupe-claims stats: one row of totals, by the database clock.
--   $1 retention in days (as the pruner computes its cutoff: now() - $1 days)
--   $2 the pending grace period in seconds (as the webhook measures idleness: from updated_at)
-- pg_total_relation_size counts the table, its indexes and TOAST; the table is found through
-- search_path, as every other statement finds it.
SELECT now() AS observed_at,
       (SELECT count(*) FROM orchestration_dedupe_claims) AS total,
       (SELECT count(*) FROM orchestration_dedupe_claims
         WHERE claimed_at < now() - make_interval(days => $1::int)) AS past_retention,
       (SELECT count(*) FROM orchestration_dedupe_claims
         WHERE state = 'pending'
           AND updated_at < now() - make_interval(secs => $2::float8)) AS pending_past_grace,
       pg_total_relation_size('orchestration_dedupe_claims'::regclass) AS table_bytes,
       (SELECT max(version) FROM orchestration_dedupe_migrations) AS migration_version
