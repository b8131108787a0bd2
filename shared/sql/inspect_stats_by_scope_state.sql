-- dedupe-claims stats: claims by scope and state, with the oldest claimed_at of each group.
SELECT scope, state, count(*) AS claims, min(claimed_at) AS oldest
  FROM orchestration_dedupe_claims
 GROUP BY scope, state
 ORDER BY scope, state
