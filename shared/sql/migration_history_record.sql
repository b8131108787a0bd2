INSERT INTO orchestration_dedupe_migrations (version, name) VALUES ($1, $2)
