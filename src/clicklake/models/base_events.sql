-- base_events: the events the session models count, one row per event_id.
-- Dedup: of all copies of an event_id, the one collected first wins (ties: derived time, then
-- source position), before anything is counted. Only page, screen and track events (page pings
-- included) take part in sessions; identify/group/alias only feed user_mapping. Bots are dropped
-- unless models.include_bots. The window filter keeps the days being recomputed.
-- key_id identifies the session key (app_id, session_key) for the window passes of sessionized:
-- sorting integers is much cheaper than sorting strings. It is a 63-bit hash of the key, so no
-- join is needed to attach it; keys whose hash another key shares (practically never; more often
-- with Spark's 32-bit hash) are numbered past the largest hash instead, so key_id stays exact.
-- Cost: the events files are read once into narrow rows (JSON is parsed only where its value is
-- used: heartbeat and scroll depth of page pings); the two hash aggregates (copies, keys) read
-- those rows, not the files again. The pipeline already drops client retries, so copies are
-- rare: candidate copies are the events whose event_id hash occurs more than once (an aggregate
-- over integers, not strings), and only their rows are ranked, by event_id itself. The descriptive columns
-- (titles, referrers, marketing, device, geo) are not carried: sessionized reads them for the few
-- rows that show them (page views, first events of sessions), finding the kept copy's row by _row
-- (its place in the events files); it also reads there the app, session key, client session id,
-- event type and name, which only shown rows need. page_url is kept for page views and pings
-- (pings are attached to page views by URL); the other rows do not show it.
WITH ev AS (
    SELECT
        event_id,
        _row,
        hash(event_id) AS event_h,
        event_type,
        event_name,
        app_id,
        user_id,
        anonymous_id,
        session_id AS client_session_id,
        CASE
            WHEN session_id IS NOT NULL THEN 's:' || session_id
            ELSE 'd:' || coalesce(anonymous_id, user_id)
        END AS session_key,
        derived_tstamp,
        CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
            coalesce(TRY_CAST(json_extract_string(properties, '$.heartbeat') AS DOUBLE), {{heartbeat_s}})
        END AS heartbeat_s,
        CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
            -- Most pings carry no scroll depth: their document is parsed once (heartbeat), not thrice.
            -- Only a document naming "scroll" (or with an escape that could spell it) can hold one.
            CASE WHEN properties LIKE '%scroll%' OR strpos(properties, chr(92)) > 0 THEN coalesce(
                TRY_CAST(json_extract_string(properties, '$.percent_scrolled') AS DOUBLE),
                TRY_CAST(json_extract_string(properties, '$.scroll_depth') AS DOUBLE)
            ) END
        END AS scroll_depth_pct,
        CASE WHEN event_type IN ('page', 'screen') OR (event_type = 'track' AND event_name = 'Page Ping') THEN
            page_url
        END AS page_url,
        coalesce(is_bot, false) AS is_bot{{conversion_columns}},
        collector_tstamp AS _collector_tstamp,
        source_stream AS _source_stream,
        source_offset AS _source_offset,
        source_index AS _source_index
    FROM src_events
),
copies AS (
    SELECT event_h
    FROM ev
    GROUP BY event_h
    HAVING count(*) > 1
),
keys AS (
    SELECT DISTINCT app_id, session_key, CAST(hash(app_id, session_key) >> 1 AS BIGINT) AS key_h
    FROM ev
),
clashes AS (
    SELECT
        app_id,
        session_key,
        (SELECT max(key_h) FROM keys) + row_number() OVER (ORDER BY app_id, session_key) AS key_no
    FROM keys
    WHERE key_h IN (SELECT key_h FROM keys GROUP BY key_h HAVING count(*) > 1)
),
deduped AS (
    SELECT ev.*
    FROM ev
    LEFT JOIN copies AS c ON c.event_h = ev.event_h
    WHERE c.event_h IS NULL AND ev.event_id IS NOT NULL
    UNION ALL
    SELECT * EXCLUDE (copy_rank)
    FROM (
        SELECT
            ev.*,
            row_number() OVER (
                PARTITION BY event_id
                ORDER BY _collector_tstamp, derived_tstamp, _source_stream, _source_offset, _source_index
            ) AS copy_rank
        FROM ev
        WHERE event_id IS NULL OR event_h IN (SELECT event_h FROM copies)
    ) AS ranked
    WHERE copy_rank = 1
)
SELECT
    d.event_id,
    d.user_id,
    d.anonymous_id,
    coalesce(k.key_no, CAST(hash(d.app_id, d.session_key) >> 1 AS BIGINT)) AS key_id,
    d.derived_tstamp AS tstamp,
    epoch_us(d.derived_tstamp) AS tstamp_us,
    CAST(d.derived_tstamp AT TIME ZONE {{tz}} AS DATE) AS local_date,
    d.event_type IN ('page', 'screen') AS is_page_view,
    (d.event_type = 'track' AND d.event_name = 'Page Ping') AS is_ping,
    d.* EXCLUDE (
        event_id, event_type, event_name, app_id, user_id, anonymous_id, client_session_id,
        session_key, event_h, derived_tstamp, _collector_tstamp, _source_stream, _source_offset, _source_index
    )
FROM deduped AS d
LEFT JOIN clashes AS k
    ON k.app_id IS NOT DISTINCT FROM d.app_id AND k.session_key IS NOT DISTINCT FROM d.session_key
WHERE d.event_type IN ('page', 'screen', 'track')
    AND ({{window}})
    AND ({{bot_filter}})
