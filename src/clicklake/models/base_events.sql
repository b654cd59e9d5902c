-- base_events: the events the session models count, one row per event_id.
-- Dedup: of all copies of an event_id, the one collected first wins (ties: derived time, then
-- source position), before anything is counted. Only page, screen and track events (page pings
-- included) take part in sessions; identify/group/alias only feed user_mapping. Bots are dropped
-- unless models.include_bots. The window filter keeps the days being recomputed.
-- key_id identifies the session key (app_id, session_key) for the window passes of sessionized:
-- sorting integers is much cheaper than sorting strings. It is a 63-bit hash of the key, so no
-- join is needed to attach it; keys whose hash another key shares (practically never; more often
-- with Spark's 32-bit hash) take their number from key_clashes instead, so key_id stays exact.
-- Cost: the events are streamed once into narrow rows, never held whole (JSON is parsed only
-- where its value is used: heartbeat and scroll depth of page pings). What the stream needs
-- to know first is small and read apart: the copies and the key clashes (copies and
-- key_clashes, built before). The pipeline already drops client retries, so copies are rare:
-- candidate copies are the events whose event_id hash occurs more than once (copies); only their
-- rows are ranked, by event_id itself, and the stream keeps a candidate only if it is the winner
-- of its rank (by _row).
-- The descriptive columns (titles, referrers, marketing, device, geo) are not carried:
-- sessionized reads them for the few rows that show them (page views, first events of
-- sessions), finding the kept copy's row by _row (its place in the events files); it also reads
-- there the app, session key, client session id, event type and name, and the URL, which only
-- shown rows need. page_url is kept for pings alone: they are attached to page views by URL.
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
            coalesce(
                -- A heartbeat the bucket rule cannot use (zero, negative, NaN, infinite, below
                -- 1 ms or above a day: floor(t / heartbeat) would fail the build or go negative)
                -- counts as missing.
                CASE WHEN hb_sent >= 0.001 AND hb_sent <= 86400 THEN hb_sent END,
                {{heartbeat_s}}
            )
        END AS heartbeat_s,
        CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
            -- Most pings carry no scroll depth: their document is parsed once (heartbeat), not thrice.
            -- Only a document naming "scroll" (or with an escape that could spell it) can hold one.
            CASE WHEN properties LIKE '%scroll%' OR strpos(properties, chr(92)) > 0 THEN coalesce(
                TRY_CAST(json_extract_string(properties, '$.percent_scrolled') AS DOUBLE),
                TRY_CAST(json_extract_string(properties, '$.scroll_depth') AS DOUBLE)
            ) END
        END AS scroll_depth_pct,
        CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN page_url END AS page_url,
        coalesce(is_bot, false) AS is_bot{{conversion_columns}}
    FROM (
        SELECT
            *,
            CASE WHEN event_type = 'track' AND event_name = 'Page Ping' THEN
                TRY_CAST(json_extract_string(properties, '$.heartbeat') AS DOUBLE)
            END AS hb_sent
        FROM src_events
    ) AS src
),
winners AS (
    SELECT _row
    FROM (
        SELECT
            _row,
            row_number() OVER (
                PARTITION BY event_id
                ORDER BY collector_tstamp, derived_tstamp, source_stream, source_offset, source_index
            ) AS copy_rank
        FROM src_events
        WHERE event_id IS NULL OR hash(event_id) IN (SELECT event_h FROM copies)
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
    {{local_date_of_derived}} AS local_date,
    d.event_type IN ('page', 'screen') AS is_page_view,
    (d.event_type = 'track' AND d.event_name = 'Page Ping') AS is_ping,
    d.* EXCLUDE (
        event_id, event_type, event_name, app_id, user_id, anonymous_id, client_session_id,
        session_key, event_h, derived_tstamp
    )
FROM ev AS d
LEFT JOIN copies AS c ON c.event_h = d.event_h
LEFT JOIN winners AS w ON w._row = d._row
LEFT JOIN key_clashes AS k
    ON k.app_id IS NOT DISTINCT FROM d.app_id AND k.session_key IS NOT DISTINCT FROM d.session_key
-- Not a copy, or the copy that won (a NULL event_id counts as a copy: one of them is kept).
WHERE ((c.event_h IS NULL AND d.event_id IS NOT NULL) OR w._row IS NOT NULL)
    AND d.event_type IN ('page', 'screen', 'track')
    AND ({{window}})
    AND ({{bot_filter}})
