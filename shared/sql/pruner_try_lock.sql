SELECT pg_try_advisory_lock($1, hashtext(current_database() || '.' || current_schema()))
