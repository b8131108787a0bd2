SELECT
    (SELECT coalesce(sum(s.idx_scan), 0)::bigint
       FROM pg_stat_user_indexes s
      WHERE s.indexrelid = (SELECT conindid FROM pg_constraint
                             WHERE conrelid = 'orchestration_dedupe_claims'::regclass AND contype = 'p')
    ) AS keyed_scans,
    (SELECT count(*)
       FROM pg_stat_activity a
      WHERE a.pid <> pg_backend_pid()
        AND a.backend_type = 'client backend'
        AND a.datname = current_database()
        AND a.application_name IS DISTINCT FROM $2
        AND a.query LIKE '%orchestration_dedupe_claims%'
        AND (a.state = 'active' OR a.state_change >= coalesce($1, now() - interval '1 second'))
    ) AS recent_sessions,
    now() AS sampled_at
