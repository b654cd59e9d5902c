-- user_mapping: anonymous_id -> the user_id of the latest event (by derived time, then collector
-- time, then event_id) that carries both, per app. Alias calls count as previous_id -> user_id.
-- Cost: the events are read once for both kinds of pair (an alias with an anonymous_id gives
-- two); the first-ranked pair of each anonymous_id is picked by one hash aggregate (arg_max over
-- the ranking key), instead of an aggregate for the latest time, a join and a window.
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
-- The pair of each anonymous_id that ranks first, in one aggregate: the key's fields in ranking
-- order, each preceded by whether it is set (a missing value ranks last, as NULLS LAST does).
latest AS (
    SELECT
        app_id,
        anonymous_id,
        max(derived_tstamp) AS mapped_tstamp,
        arg_max(
            user_id,
            {
                'has_derived': derived_tstamp IS NOT NULL,
                'derived': derived_tstamp,
                'has_collector': collector_tstamp IS NOT NULL,
                'collector': collector_tstamp,
                'has_event_id': event_id IS NOT NULL,
                'event_id': event_id,
                'user_id': user_id
            }
        ) AS user_id
    FROM pairs
    GROUP BY app_id, anonymous_id
)
SELECT app_id, anonymous_id, user_id, mapped_tstamp
FROM latest
