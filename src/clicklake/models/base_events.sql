-- base_events: the events the session models count, one row per event_id.
-- Dedup: of all copies of an event_id, the one collected first wins (ties: derived time, then
-- source position), before anything is counted. Only page, screen and track events (page pings
-- included) take part in sessions; identify/group/alias only feed user_mapping. Bots are dropped
-- unless models.include_bots. The window filter keeps the days being recomputed.
-- Cost: the pipeline already drops client retries, so copies are rare here. They are found with
-- one hash aggregate over event_id and only their rows are ranked (no sort of every event). The
-- rows stay narrow: the descriptive columns (titles, referrers, marketing, device, geo) are read
-- by sessionized for the few rows that show them (page views, first events of sessions);
-- has_copies tells it which event_ids need the same copy choice again. JSON is parsed only in
-- the rows where its value is used (heartbeat and scroll depth of page pings); event type and
-- name are kept for page views, page_url for page views and pings (the others do not show them).
WITH copies AS (
    SELECT event_id
    FROM src_events
    GROUP BY event_id
    HAVING count(*) > 1
),
deduped AS (
    SELECT e.*, false AS has_copies
    FROM src_events AS e
    LEFT JOIN copies AS c ON c.event_id = e.event_id
    WHERE c.event_id IS NULL AND e.event_id IS NOT NULL
    UNION ALL
    SELECT * EXCLUDE (copy_rank)
    FROM (
        SELECT
            e.*,
            true AS has_copies,
            row_number() OVER (
                PARTITION BY e.event_id
                ORDER BY e.collector_tstamp, e.derived_tstamp, e.source_stream, e.source_offset, e.source_index
            ) AS copy_rank
        FROM src_events AS e
        WHERE e.event_id IS NULL OR e.event_id IN (SELECT event_id FROM copies)
    ) AS ranked
    WHERE copy_rank = 1
)
SELECT
    event_id,
    has_copies,
    CASE WHEN event_type IN ('page', 'screen') THEN event_type END AS event_type,
    CASE WHEN event_type IN ('page', 'screen') THEN event_name END AS event_name,
    app_id,
    user_id,
    anonymous_id,
    session_id AS client_session_id,
    CASE
        WHEN session_id IS NOT NULL THEN 's:' || session_id
        ELSE 'd:' || coalesce(anonymous_id, user_id)
    END AS session_key,
    derived_tstamp AS tstamp,
    epoch_us(derived_tstamp) AS tstamp_us,
    CAST(derived_tstamp AT TIME ZONE {{tz}} AS DATE) AS local_date,
    event_type IN ('page', 'screen') AS is_page_view,
    (event_type = 'track' AND event_name = 'Page Ping') AS is_ping,
    CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
        coalesce(TRY_CAST(json_extract_string(properties, '$.heartbeat') AS DOUBLE), {{heartbeat_s}})
    END AS heartbeat_s,
    CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
        coalesce(
            TRY_CAST(json_extract_string(properties, '$.percent_scrolled') AS DOUBLE),
            TRY_CAST(json_extract_string(properties, '$.scroll_depth') AS DOUBLE)
        )
    END AS scroll_depth_pct,
    CASE WHEN event_type IN ('page', 'screen') OR (event_type = 'track' AND event_name = 'Page Ping') THEN
        page_url
    END AS page_url,
    coalesce(is_bot, false) AS is_bot{{conversion_columns}}
FROM deduped
WHERE event_type IN ('page', 'screen', 'track')
    AND ({{window}})
    AND ({{bot_filter}})
