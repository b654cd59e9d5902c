-- page_views: one row per page or screen view (page_view_id = its event_id).
-- A page ping belongs to the latest page view at or before it in the same session with the same
-- page_url. Engaged time (heartbeat floor-bucket rule): with n = number of distinct
-- floor(ping time / heartbeat) buckets among its pings, engaged_time_s = 0 if n = 0, else
-- heartbeat * (n - 1) + models.page_ping_min_visit_s; duplicate or jittered pings inside one
-- bucket count once. absolute_time_s = last attached ping time - page view time (0 without pings).
WITH pv AS (
    SELECT * FROM sessionized WHERE is_page_view
),
stream AS (
    SELECT
        session_id, coalesce(page_url, '') AS url_key, tstamp_us, 0 AS kind, event_id,
        event_id AS pv_id, CAST(NULL AS DOUBLE) AS heartbeat_s, CAST(NULL AS DOUBLE) AS scroll_depth_pct
    FROM pv
    UNION ALL
    SELECT
        session_id, coalesce(page_url, '') AS url_key, tstamp_us, 1 AS kind, event_id,
        CAST(NULL AS VARCHAR) AS pv_id, heartbeat_s, scroll_depth_pct
    FROM sessionized
    WHERE is_ping
),
attached AS (
    SELECT
        s.*,
        last_value(pv_id IGNORE NULLS) OVER (
            PARTITION BY session_id, url_key
            ORDER BY tstamp_us, kind, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS owner_id
    FROM stream AS s
),
ping_stats AS (
    SELECT
        owner_id,
        count(DISTINCT CAST(floor(tstamp_us / (heartbeat_s * 1000000)) AS BIGINT)) AS ping_buckets,
        max(heartbeat_s) AS heartbeat_s,
        max(tstamp_us) AS last_ping_us,
        max(scroll_depth_pct) AS max_scroll_depth_pct
    FROM attached
    WHERE kind = 1 AND owner_id IS NOT NULL
    GROUP BY owner_id
),
cleaned AS (
    SELECT
        pv.*,
        {{page_path_clean}} AS page_path_clean
    FROM pv
)
SELECT
    c.event_id AS page_view_id,
    c.app_id,
    c.session_id,
    c.client_session_id,
    c.device_key,
    c.anonymous_id,
    c.user_id,
    c.local_date AS page_view_date,
    c.tstamp AS derived_tstamp,
    CAST(row_number() OVER (PARTITION BY c.session_id ORDER BY c.tstamp_us, c.event_id) AS BIGINT)
        AS page_view_in_session_index,
    c.event_type,
    c.event_name AS page_name,
    c.page_url,
    c.page_urlhost,
    c.page_urlpath,
    c.page_urlquery,
    c.page_path_clean,
    c.page_title,
    c.page_referrer,
    c.refr_urlhost,
    c.refr_medium,
    c.refr_source,
    c.mkt_source,
    c.mkt_medium,
    c.mkt_campaign,
    c.default_channel_group,
    c.dvce_class,
    c.geo_country,
    CASE
        WHEN coalesce(p.ping_buckets, 0) = 0 THEN 0.0
        ELSE p.heartbeat_s * (p.ping_buckets - 1) + {{min_visit_s}}
    END AS engaged_time_s,
    CASE
        WHEN p.last_ping_us IS NULL THEN 0.0
        ELSE (p.last_ping_us - c.tstamp_us) / 1000000.0
    END AS absolute_time_s,
    p.max_scroll_depth_pct,
    c.is_bot
FROM cleaned AS c
LEFT JOIN ping_stats AS p ON p.owner_id = c.event_id
