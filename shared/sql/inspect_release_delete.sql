-- dedupe-claims release --yes, second statement: delete exactly the one key locked by
-- inspect_release_lock.sql ($1 delivery_id, $2 scope, $3 namespace, $4 orchestration).
DELETE FROM orchestration_dedupe_claims
 WHERE delivery_id = $1 AND scope = $2 AND namespace = $3 AND orchestration = $4
RETURNING delivery_id, scope, namespace, orchestration,
          run_namespace, run_name, run_uid, state,
          claimed_at, updated_at, admissions, takeovers,
          now() AS observed_at
