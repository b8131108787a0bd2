SELECT claimed_at
  FROM orchestration_dedupe_claims
 WHERE claimed_at >= $1 AND claimed_at < $2
 ORDER BY claimed_at
OFFSET $3 LIMIT 1
