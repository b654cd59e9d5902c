-- user_mapping: anonymous_id -> the user_id of the latest event (by derived time, then collector
-- time, then event_id) that carries both, per app. Alias calls count as previous_id -> user_id.
-- Cost: the events are read once for both kinds of pair (an alias with an anonymous_id gives
-- two); the latest time per anonymous_id is a hash aggregate; only the pairs at that time are
-- ranked (not every identified event).
WITH identified AS (
    SELECT
        app_id,
        anonymous_id,
        CASE WHEN event_type = 'alias' THEN previous_id END AS previous_id,
        user_id,
        derived_tstamp,
        collector_tstamp,
        event_id
    FROM src_events
    WHERE user_id IS NOT NULL
        AND (anonymous_id IS NOT NULL OR (event_type = 'alias' AND previous_id IS NOT NULL))
),
pairs AS (
    SELECT app_id, anonymous_id, user_id, derived_tstamp, collector_tstamp, event_id
    FROM identified
    WHERE anonymous_id IS NOT NULL
    UNION ALL
    SELECT app_id, previous_id AS anonymous_id, user_id, derived_tstamp, collector_tstamp, event_id
    FROM identified
    WHERE previous_id IS NOT NULL
),
latest AS (
    SELECT app_id, anonymous_id, max(derived_tstamp) AS derived_tstamp
    FROM pairs
    GROUP BY app_id, anonymous_id
),
ranked AS (
    SELECT
        p.*,
        row_number() OVER (
            PARTITION BY p.app_id, p.anonymous_id
            ORDER BY p.collector_tstamp DESC, p.event_id DESC, p.user_id DESC
        ) AS rn
    FROM pairs AS p
    JOIN latest AS l
        ON l.app_id IS NOT DISTINCT FROM p.app_id
        AND l.anonymous_id = p.anonymous_id
        AND l.derived_tstamp IS NOT DISTINCT FROM p.derived_tstamp
)
SELECT app_id, anonymous_id, user_id, derived_tstamp AS mapped_tstamp
FROM ranked
WHERE rn = 1
