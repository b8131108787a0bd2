SELECT pg_advisory_xact_lock($1, hashtext(current_database() || '.' || current_schema()))
