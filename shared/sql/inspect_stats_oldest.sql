-- dedupe-claims stats: the oldest claim (the next the pruner removes), through the claimed_at index.
SELECT delivery_id, scope, namespace, orchestration,
       run_namespace, run_name, run_uid, state,
       claimed_at, updated_at, admissions, takeovers,
       now() AS observed_at
  FROM orchestration_dedupe_claims
 ORDER BY claimed_at
 LIMIT 1
