SELECT false AS written, h.run_namespace, h.run_name, h.run_uid, h.state,
       h.claimed_at, h.updated_at, h.admissions, h.takeovers, now() AS observed_at
  FROM orchestration_dedupe_claims h
 WHERE h.delivery_id = $1 AND h.scope = $2 AND h.namespace = $3 AND h.orchestration = $4
