DELETE FROM orchestration_dedupe_claims
 WHERE claimed_at >= $1 AND claimed_at < $2
