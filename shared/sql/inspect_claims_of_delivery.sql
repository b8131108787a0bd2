-- dedupe-claims get: every claim of one delivery ($1), in any scope, with the database clock.
SELECT delivery_id, scope, namespace, orchestration,
       run_namespace, run_name, run_uid, state,
       claimed_at, updated_at, admissions, takeovers,
       now() AS observed_at
  FROM orchestration_dedupe_claims
 WHERE delivery_id = $1
 ORDER BY scope, namespace, orchestration
