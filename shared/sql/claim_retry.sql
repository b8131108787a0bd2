-- The uid stays the first admitted create's: a retried create of a name that exists is
-- refused by the API server itself (AlreadyExists) after this webhook allowed it, so its uid
-- would name a run that never existed. When the API server shows no run of that name (the
-- first create never landed), the webhook records the retry's uid (claim_retry_uid.sql);
-- without the lookup, the reconciler records the run's uid as it confirms the claim.
UPDATE orchestration_dedupe_claims c
   SET updated_at = now(), admissions = c.admissions + 1
 WHERE c.delivery_id = $1 AND c.scope = $2 AND c.namespace = $3 AND c.orchestration = $4
   AND c.state = 'pending' AND c.run_namespace = $5 AND c.run_name = $6
RETURNING true AS written, c.run_namespace, c.run_name, c.run_uid, c.state, c.claimed_at,
          c.updated_at, c.admissions, c.takeovers, now() AS observed_at
