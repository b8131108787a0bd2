WITH bound AS (
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
  FROM gone
