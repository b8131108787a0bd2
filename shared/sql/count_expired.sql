SELECT count(*) AS expired, min(claimed_at) AS oldest
  FROM orchestration_dedupe_claims
 WHERE claimed_at < $1
