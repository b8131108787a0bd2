-- dedupe-claims list: newest first, each filter ignored when its parameter is NULL.
--   $1 state ('pending' | 'confirmed')
--   $2 older than this many seconds (claimed_at, by the database clock)
--   $3 the run's namespace (every scope records it; the key's namespace is '' in scope cluster)
--   $4 the key's orchestration (only scope orchestration records one)
--   $5 row limit (the caller asks for one more than it shows, to tell that the limit cut the list)
--   $6..$10 where the previous page ended (`--continue`): its last row's claimed_at and key
--           (delivery_id, scope, namespace, orchestration); NULL for the first page. Rows come
--           strictly after it in this order, so a page never repeats or skips a row that
--           existed when the previous page was read (keyset pagination: no OFFSET to drift).
-- Served by the claimed_at index, walked backwards (the `claimed_at <= $6` bound lets a
-- continued page start where the previous one stopped instead of at the newest row).
SELECT delivery_id, scope, namespace, orchestration,
       run_namespace, run_name, run_uid, state,
       claimed_at, updated_at, admissions, takeovers,
       now() AS observed_at
  FROM orchestration_dedupe_claims
 WHERE ($1::text IS NULL OR state = $1::text)
   AND ($2::float8 IS NULL OR claimed_at < now() - make_interval(secs => $2::float8))
   AND ($3::text IS NULL OR run_namespace = $3::text)
   AND ($4::text IS NULL OR orchestration = $4::text)
   AND ($6::timestamptz IS NULL OR claimed_at <= $6::timestamptz)
   AND ($6::timestamptz IS NULL
        OR claimed_at < $6::timestamptz
        OR (delivery_id, scope, namespace, orchestration)
           > ($7::text, $8::text, $9::text, $10::text))
 ORDER BY claimed_at DESC, delivery_id, scope, namespace, orchestration
 LIMIT $5
