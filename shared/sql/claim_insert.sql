WITH attempt AS (
    INSERT INTO orchestration_dedupe_claims AS c
        (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
    ON CONFLICT (delivery_id, scope, namespace, orchestration) DO NOTHING
    RETURNING c.*
)
SELECT true AS written, a.run_namespace, a.run_name, a.run_uid, a.state, a.claimed_at,
       a.updated_at, a.admissions, a.takeovers, now() AS observed_at
  FROM attempt a
UNION ALL
SELECT false AS written, h.run_namespace, h.run_name, h.run_uid, h.state, h.claimed_at,
       h.updated_at, h.admissions, h.takeovers, now() AS observed_at
  FROM orchestration_dedupe_claims h
 WHERE h.delivery_id = $1 AND h.scope = $2 AND h.namespace = $3 AND h.orchestration = $4
   AND NOT EXISTS (SELECT 1 FROM attempt)
