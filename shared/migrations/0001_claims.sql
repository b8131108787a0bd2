-- One row per claim key. The primary key is the whole promise of the product:
-- two admissions for one key cannot both insert, whatever the application does.
-- Key parts outside the configured scope are stored as '' (Kubernetes names are
-- never empty, so '' cannot collide with a real namespace or orchestration).
CREATE TABLE orchestration_dedupe_claims (
    delivery_id    text        NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 63),
    scope          text        NOT NULL CHECK (scope IN ('orchestration', 'namespace', 'cluster')),
    namespace      text        NOT NULL,
    orchestration  text        NOT NULL,
    run_namespace  text        NOT NULL,
    run_name       text        NOT NULL,
    run_uid        text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('pending', 'confirmed')),
    -- claimed_at: when the current holder took the claim (database clock); retention counts from it.
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    -- updated_at: last admission or state change; the pending grace period counts from it.
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- admissions: how many times the holder was admitted again (retried creates); 0 right after a claim.
    admissions     integer     NOT NULL DEFAULT 0,
    takeovers      integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, scope, namespace, orchestration)
);

-- Serves the pruner's "oldest expired first" range scan.
CREATE INDEX orchestration_dedupe_claims_claimed_at_idx
    ON orchestration_dedupe_claims (claimed_at);
