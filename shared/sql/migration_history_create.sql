CREATE TABLE IF NOT EXISTS orchestration_dedupe_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
