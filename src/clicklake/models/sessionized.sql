-- sessionized: base_events with their session.
-- Per (app_id, session_key) -- the client session id when sent, else the device key
-- coalesce(anonymous_id, user_id) -- events ordered by derived time form runs: a new run starts
-- after models.session_gap_minutes of inactivity (and, with models.split_at_midnight, when the
-- local date changes). A run longer than models.max_session_length_hours is cut into pieces of
-- that length counted from the run's first event. One piece is one session; its id is
-- md5(app_id | session_key | first event time in microseconds). Sessions made only of page pings
-- are dropped (a tab left open is not a visit). Cuts depend on times alone: events at the same
-- instant always share a session.
-- Cost: the cuts are computed over the distinct (key, time) points with an integer key (key_id,
-- numbered in app_id, session_key order), so the window passes sort two integers. A session is
-- (key_id, session_start_us) until the end; rows find theirs by time range. The descriptive
-- columns are read from src_events only for page views and the events at a session's start (the
-- candidates for its first event), taking the copy base_events kept; elsewhere they are NULL, as
-- are app_id, session_id and client_session_id (nothing reads them there). The rest of the row
-- (conversion columns) follows.
WITH keys AS (
    SELECT app_id, session_key, row_number() OVER (ORDER BY app_id, session_key) AS key_id
    FROM (SELECT DISTINCT app_id, session_key FROM base_events) AS k
),
keyed AS (
    SELECT b.*, k.key_id
    FROM base_events AS b
    JOIN keys AS k
        ON k.app_id IS NOT DISTINCT FROM b.app_id AND k.session_key IS NOT DISTINCT FROM b.session_key
),
points AS (
    SELECT
        key_id,
        tstamp_us,
        max(local_date) AS local_date,
        sum(CASE WHEN is_ping THEN 0 ELSE 1 END) AS non_ping
    FROM keyed
    GROUP BY key_id, tstamp_us
),
ordered AS (
    SELECT
        p.*,
        lag(tstamp_us) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS prev_us,
        lag(local_date) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS prev_date
    FROM points AS p
),
runs AS (
    SELECT
        o.*,
        max(
            CASE
                WHEN prev_us IS NULL OR tstamp_us - prev_us >= {{gap_us}}{{midnight_clause}} THEN tstamp_us
            END
        ) OVER (
            PARTITION BY key_id
            ORDER BY tstamp_us
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS run_start_us
    FROM ordered AS o
),
pieces AS (
    SELECT
        key_id,
        tstamp_us,
        non_ping,
        run_start_us,
        CAST(floor((tstamp_us - run_start_us) / {{max_len_us}}) AS BIGINT) AS piece_no
    FROM runs
),
spans AS (
    SELECT
        key_id,
        min(tstamp_us) AS session_start_us,
        max(tstamp_us) AS session_end_us,
        sum(non_ping) AS non_ping_events
    FROM pieces
    GROUP BY key_id, run_start_us, piece_no
),
named AS (
    SELECT
        s.key_id,
        s.session_start_us,
        s.session_end_us,
        md5(k.app_id || '|' || k.session_key || '|' || CAST(s.session_start_us AS VARCHAR)) AS session_id
    FROM spans AS s
    JOIN keys AS k ON k.key_id = s.key_id
    WHERE s.non_ping_events > 0
),
sessioned AS (
    SELECT r.*, n.session_start_us, n.session_id
    FROM keyed AS r
    JOIN named AS n
        ON n.key_id = r.key_id AND r.tstamp_us >= n.session_start_us AND r.tstamp_us <= n.session_end_us
),
shown AS (
    SELECT event_id, has_copies
    FROM sessioned
    WHERE is_page_view OR tstamp_us = session_start_us
),
described AS (
    SELECT
        e.event_id,
        e.page_title,
        e.page_referrer,
        coalesce(
            nullif(e.page_urlpath, ''),
            nullif(e.page_path, ''),
            nullif(regexp_extract(e.page_url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*([^?#]*)', 1), ''),
            '/'
        ) AS page_urlpath,
        e.page_urlhost,
        e.page_urlquery,
        e.refr_urlhost,
        e.refr_medium,
        e.refr_source,
        e.refr_term,
        e.mkt_source,
        e.mkt_medium,
        e.mkt_campaign,
        e.mkt_term,
        e.mkt_content,
        e.mkt_clickid,
        e.mkt_network,
        e.default_channel_group,
        e.br_family,
        e.os_family,
        e.dvce_family,
        e.dvce_class,
        e.geo_country,
        e.geo_region,
        e.geo_city,
        1 AS copy_rank
    FROM src_events AS e
    JOIN shown AS s ON s.event_id = e.event_id
    WHERE NOT s.has_copies
    UNION ALL
    SELECT *
    FROM (
        SELECT
            e.event_id,
            e.page_title,
            e.page_referrer,
            coalesce(
                nullif(e.page_urlpath, ''),
                nullif(e.page_path, ''),
                nullif(regexp_extract(e.page_url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*([^?#]*)', 1), ''),
                '/'
            ) AS page_urlpath,
            e.page_urlhost,
            e.page_urlquery,
            e.refr_urlhost,
            e.refr_medium,
            e.refr_source,
            e.refr_term,
            e.mkt_source,
            e.mkt_medium,
            e.mkt_campaign,
            e.mkt_term,
            e.mkt_content,
            e.mkt_clickid,
            e.mkt_network,
            e.default_channel_group,
            e.br_family,
            e.os_family,
            e.dvce_family,
            e.dvce_class,
            e.geo_country,
            e.geo_region,
            e.geo_city,
            row_number() OVER (
                PARTITION BY e.event_id
                ORDER BY e.collector_tstamp, e.derived_tstamp, e.source_stream, e.source_offset, e.source_index
            ) AS copy_rank
        FROM src_events AS e
        JOIN shown AS s ON s.event_id IS NOT DISTINCT FROM e.event_id
        WHERE s.has_copies
    ) AS ranked
    WHERE copy_rank = 1
)
SELECT
    s.event_id,
    s.key_id,
    s.session_start_us,
    CASE WHEN s.is_page_view OR s.tstamp_us = s.session_start_us THEN s.session_id END AS session_id,
    CASE WHEN s.is_page_view OR s.tstamp_us = s.session_start_us THEN s.app_id END AS app_id,
    CASE WHEN s.is_page_view OR s.tstamp_us = s.session_start_us THEN s.client_session_id END
        AS client_session_id,
    s.event_type,
    s.event_name,
    s.user_id,
    s.anonymous_id,
    s.tstamp,
    s.tstamp_us,
    s.local_date,
    s.is_page_view,
    s.is_ping,
    s.heartbeat_s,
    s.scroll_depth_pct,
    s.page_url,
    s.is_bot,
    s.* EXCLUDE (
        event_id, has_copies, event_type, event_name, app_id, user_id, anonymous_id, client_session_id,
        session_key, tstamp, tstamp_us, local_date, is_page_view, is_ping, heartbeat_s, scroll_depth_pct,
        page_url, is_bot, key_id, session_start_us, session_id
    ),
    d.* EXCLUDE (event_id, copy_rank)
FROM sessioned AS s
LEFT JOIN described AS d ON d.event_id IS NOT DISTINCT FROM s.event_id
