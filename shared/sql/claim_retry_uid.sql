UPDATE orchestration_dedupe_claims c
   SET run_uid = $7
 WHERE c.delivery_id = $1 AND c.scope = $2 AND c.namespace = $3 AND c.orchestration = $4
   AND c.state = 'pending' AND c.run_namespace = $5 AND c.run_name = $6
RETURNING c.run_uid
