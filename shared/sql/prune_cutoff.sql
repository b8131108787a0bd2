SELECT now() - make_interval(days => $1) AS cutoff, now() AS observed_at
