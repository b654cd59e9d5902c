-- user_mapping: anonymous_id -> the user_id of the latest event (by derived time, then collector
-- time, then event_id) that carries both, per app. Alias calls count as previous_id -> user_id.
WITH pairs AS (
    SELECT app_id, anonymous_id, user_id, derived_tstamp, collector_tstamp, event_id
    FROM src_events
    WHERE anonymous_id IS NOT NULL AND user_id IS NOT NULL
    UNION ALL
    SELECT app_id, previous_id AS anonymous_id, user_id, derived_tstamp, collector_tstamp, event_id
    FROM src_events
    WHERE event_type = 'alias' AND previous_id IS NOT NULL AND user_id IS NOT NULL
),
ranked AS (
    SELECT
        p.*,
        row_number() OVER (
            PARTITION BY app_id, anonymous_id
            ORDER BY derived_tstamp DESC, collector_tstamp DESC, event_id DESC, user_id DESC
        ) AS rn
    FROM pairs AS p
)
SELECT app_id, anonymous_id, user_id, derived_tstamp AS mapped_tstamp
FROM ranked
WHERE rn = 1
