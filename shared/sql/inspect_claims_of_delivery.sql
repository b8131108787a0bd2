-- dedupe-claims get and release: the claims of delivery $1, each key filter ignored when NULL
-- ($2 scope, $3 key namespace, $4 key orchestration; `get` passes none). Reads only; the
-- release transaction runs it with FOR UPDATE appended (inspect::RELEASE_LOCK), so the row
-- it deletes next is the row shown (a concurrent take-over waits for the transaction, or has
-- already committed and is read).
SELECT delivery_id, scope, namespace, orchestration,
       run_namespace, run_name, run_uid, state,
       claimed_at, updated_at, admissions, takeovers,
       now() AS observed_at
  FROM orchestration_dedupe_claims
 WHERE delivery_id = $1
   AND ($2::text IS NULL OR scope = $2::text)
   AND ($3::text IS NULL OR namespace = $3::text)
   AND ($4::text IS NULL OR orchestration = $4::text)
 ORDER BY scope, namespace, orchestration
