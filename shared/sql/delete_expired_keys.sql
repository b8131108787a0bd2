WITH doomed AS (
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
SELECT count(*) AS deleted, max(claimed_at) AS newest FROM gone
