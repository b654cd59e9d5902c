-- copies: the hashes of event_id that more than one event has, each once: the events that may be
-- copies of one another (see base_events, which keeps one of each). The pipeline drops client
-- retries, so there are few or none. NULL event_ids hash alike, so they count as copies too.
-- A statement of its own, before base_events: base_events then joins a table whose size is
-- known (a few rows), and the DuckDB runner computes the same rows without this aggregate: it
-- sorts the hashes (clicklake.models.runner.create_copies), a third of the CPU of a hash
-- aggregate over millions of distinct values. The two must agree; tests/models/test_row_key.py
-- checks it.
SELECT event_h
FROM (SELECT hash(event_id) AS event_h FROM src_events) AS ids
GROUP BY event_h
HAVING count(*) > 1
