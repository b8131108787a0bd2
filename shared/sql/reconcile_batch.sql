-- The reconciler's batch (RECONCILE_BATCH in shared/src/sql.rs): one statement for up to a
-- few hundred runs the API server shows, one row per run, as parallel arrays:
-- $1 delivery_id, $2 scope, $3 namespace, $4 orchestration (the run's claim key),
-- $5 run_namespace, $6 run_name, $7 run_uid, $8 holds (true for the one run per key that
-- holds it: the oldest by creationTimestamp, ties by name).
--
-- confirmed: a pending claim naming one of these runs (namespace/name) becomes confirmed,
--   since the API server shows that run carrying the key, with the uid it shows (a retried
--   create keeps the first create's uid, which is wrong when only the retry landed).
-- backfilled: a key with no claim gets a confirmed claim naming its holding run. ON CONFLICT
--   DO NOTHING makes it idempotent across replicas and restarts: a claim that exists (made
--   by the webhook, another replica, or this one before a restart) is never changed here.
-- Both parts see the same snapshot; the insert's conflict check still sees rows the update
-- touched, so a key is never both confirmed and back-filled.
WITH observed AS (
    SELECT *
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                  $5::text[], $6::text[], $7::text[], $8::bool[])
        AS o(delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, holds)
), confirmed AS (
    UPDATE orchestration_dedupe_claims c
       SET state = 'confirmed', run_uid = o.run_uid, updated_at = now()
      FROM observed o
     WHERE c.delivery_id = o.delivery_id AND c.scope = o.scope
       AND c.namespace = o.namespace AND c.orchestration = o.orchestration
       AND c.state = 'pending'
       AND c.run_namespace = o.run_namespace AND c.run_name = o.run_name
    RETURNING 1
), backfilled AS (
    INSERT INTO orchestration_dedupe_claims
        (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
    SELECT delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, 'confirmed'
      FROM observed
     WHERE holds
    ON CONFLICT (delivery_id, scope, namespace, orchestration) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM confirmed) AS confirmed,
       (SELECT count(*) FROM backfilled) AS backfilled
