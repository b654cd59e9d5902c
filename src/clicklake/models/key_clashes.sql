-- key_clashes: the session keys (app_id, session_key) whose hash another key shares, each with
-- the number that replaces its hash as key_id (see base_events). Practically never any with
-- DuckDB's 64-bit hash; a few with Spark's 32-bit one. They are numbered past the largest hash,
-- in key order, so key_id stays exact and deterministic.
-- session_key: the client session id when sent, else the device key coalesce(anonymous_id,
-- user_id), as in base_events and sessionized.
-- Cost: one read of the four key columns and a hash aggregate of the distinct keys. It is a
-- statement of its own (not a CTE of base_events) so that base_events joins a table whose size
-- is known: the join then hashes these few rows, not the millions of events.
WITH keys AS (
    SELECT DISTINCT app_id, session_key, CAST(hash(app_id, session_key) >> 1 AS BIGINT) AS key_h
    FROM (
        SELECT
            app_id,
            CASE
                WHEN session_id IS NOT NULL THEN 's:' || session_id
                ELSE 'd:' || coalesce(anonymous_id, user_id)
            END AS session_key
        FROM src_events
    ) AS k
)
SELECT
    app_id,
    session_key,
    (SELECT max(key_h) FROM keys) + row_number() OVER (ORDER BY app_id, session_key) AS key_no
FROM keys
WHERE key_h IN (SELECT key_h FROM keys GROUP BY key_h HAVING count(*) > 1)
