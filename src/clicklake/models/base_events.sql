-- base_events: the events the session models count, one row per event_id.
-- Dedup: of all copies of an event_id, the one collected first wins (ties: derived time, then
-- source position), before anything is counted. Only page, screen and track events (page pings
-- included) take part in sessions; identify/group/alias only feed user_mapping. Bots are dropped
-- unless models.include_bots. The window filter keeps the days being recomputed.
-- The row-level expressions come first, so that the dedup window sorts narrow rows (no JSON
-- columns): a 10M-event build would otherwise carry every properties/context string through it.
WITH narrowed AS (
    SELECT
        event_id,
        event_type,
        event_name,
        app_id,
        user_id,
        anonymous_id,
        session_id AS client_session_id,
        coalesce(anonymous_id, user_id) AS device_key,
        CASE
            WHEN session_id IS NOT NULL THEN 's:' || session_id
            ELSE 'd:' || coalesce(anonymous_id, user_id)
        END AS session_key,
        derived_tstamp AS tstamp,
        epoch_us(derived_tstamp) AS tstamp_us,
        CAST(derived_tstamp AT TIME ZONE {{tz}} AS DATE) AS local_date,
        event_type IN ('page', 'screen') AS is_page_view,
        (event_type = 'track' AND event_name = 'Page Ping') AS is_ping,
        coalesce(
            CASE WHEN event_type = 'track' AND event_name = 'Page Ping'
                 THEN TRY_CAST(json_extract_string(properties, '$.heartbeat') AS DOUBLE) END,
            {{heartbeat_s}}
        ) AS heartbeat_s,
        coalesce(
            TRY_CAST(json_extract_string(properties, '$.percent_scrolled') AS DOUBLE),
            TRY_CAST(json_extract_string(properties, '$.scroll_depth') AS DOUBLE)
        ) AS scroll_depth_pct,
        page_url,
        page_title,
        page_referrer,
        coalesce(
            nullif(page_urlpath, ''),
            nullif(page_path, ''),
            nullif(regexp_extract(page_url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*([^?#]*)', 1), ''),
            '/'
        ) AS page_urlpath,
        page_urlhost,
        page_urlquery,
        refr_urlhost,
        refr_medium,
        refr_source,
        refr_term,
        mkt_source,
        mkt_medium,
        mkt_campaign,
        mkt_term,
        mkt_content,
        mkt_clickid,
        mkt_network,
        default_channel_group,
        coalesce(is_bot, false) AS is_bot,
        br_family,
        os_family,
        dvce_family,
        dvce_class,
        geo_country,
        geo_region,
        geo_city{{conversion_columns}},
        derived_tstamp,
        collector_tstamp AS _collector_tstamp,
        source_stream AS _source_stream,
        source_offset AS _source_offset,
        source_index AS _source_index
    FROM src_events AS e
),
ranked AS (
    SELECT
        n.*,
        row_number() OVER (
            PARTITION BY n.event_id
            ORDER BY n._collector_tstamp, n.derived_tstamp, n._source_stream, n._source_offset, n._source_index
        ) AS copy_rank
    FROM narrowed AS n
)
SELECT * EXCLUDE (derived_tstamp, _collector_tstamp, _source_stream, _source_offset, _source_index, copy_rank)
FROM ranked
WHERE copy_rank = 1
    AND event_type IN ('page', 'screen', 'track')
    AND ({{window}})
    AND ({{bot_filter}})
