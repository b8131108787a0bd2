WITH input AS (
    -- set_config(…, true) bounds this statement's lock waits (the setting ends with its
    -- transaction): a key another session holds (an operator's open DELETE, say) fails the
    -- batch quickly with 55P03 instead of holding its other claims, and the caller sends
    -- each claim alone. Evaluated before any row reaches the insert (the insert sorts them).
    SELECT i.*
      FROM (SELECT set_config('lock_timeout', $8, true)) AS bound,
           unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
           WITH ORDINALITY
           AS i(delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, ord)
), attempt AS (
    INSERT INTO orchestration_dedupe_claims AS c
        (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
    SELECT delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, 'pending'
      FROM input
     ORDER BY ord
    ON CONFLICT (delivery_id, scope, namespace, orchestration) DO NOTHING
    RETURNING c.*
)
SELECT i.ord, true AS written, a.run_namespace, a.run_name, a.run_uid, a.state, a.claimed_at,
       a.updated_at, a.admissions, a.takeovers, now() AS observed_at
  FROM input i
  JOIN attempt a USING (delivery_id, scope, namespace, orchestration)
UNION ALL
SELECT i.ord, false AS written, h.run_namespace, h.run_name, h.run_uid, h.state, h.claimed_at,
       h.updated_at, h.admissions, h.takeovers, now() AS observed_at
  FROM input i
  JOIN orchestration_dedupe_claims h USING (delivery_id, scope, namespace, orchestration)
 WHERE NOT EXISTS (
        SELECT 1 FROM attempt a
         WHERE a.delivery_id = i.delivery_id AND a.scope = i.scope
           AND a.namespace = i.namespace AND a.orchestration = i.orchestration)
