-- dedupe-claims list: newest first, each filter ignored when its parameter is NULL.
--   $1 state ('pending' | 'confirmed')
--   $2 older than this many seconds (claimed_at, by the database clock)
--   $3 the run's namespace (every scope records it; the key's namespace is '' in scope cluster)
--   $4 the key's orchestration (only scope orchestration records one)
--   $5 row limit (the caller asks for one more than it shows, to tell that the limit cut the list)
-- Served by the claimed_at index, walked backwards.
SELECT delivery_id, scope, namespace, orchestration,
       run_namespace, run_name, run_uid, state,
       claimed_at, updated_at, admissions, takeovers,
       now() AS observed_at
  FROM orchestration_dedupe_claims
 WHERE ($1::text IS NULL OR state = $1::text)
   AND ($2::float8 IS NULL OR claimed_at < now() - make_interval(secs => $2::float8))
   AND ($3::text IS NULL OR run_namespace = $3::text)
   AND ($4::text IS NULL OR orchestration = $4::text)
 ORDER BY claimed_at DESC, delivery_id, scope, namespace, orchestration
 LIMIT $5
