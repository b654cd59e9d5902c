-- page_view_stats: what page_views computes of each page or screen view, keyed by its row (_row,
-- as in sessionized): its index in the session, page_path_clean, engaged and absolute time,
-- scroll depth. page_views (the table's rows) joins these to the view's own columns in
-- sessionized; sessions counts its page views and finds its landing and exit pages here.
-- A page ping belongs to the latest page view at or before it in the same session with the same
-- page_url. Engaged time (heartbeat floor-bucket rule): with n = number of distinct
-- floor(ping time / heartbeat) buckets among its pings, engaged_time_s = 0 if n = 0, else
-- heartbeat * (n - 1) + models.page_ping_min_visit_s; duplicate or jittered pings inside one
-- bucket count once. absolute_time_s = last attached ping time - page view time (0 without pings).
-- page_path_clean: the first models.url_rules pattern matching page_urlpath gives its alias.
-- Cost: a session is (key_id, session_start_us) here (see sessionized); pings are taken from
-- base_events. Each page view owns the pings of its URL from its time until the next view of that
-- URL in the session, or the session's end (a lead over the page views alone), so pings are
-- attached by one join instead of a window over all rows; at equal times the view later in the
-- session owns them, as the latest at or before them.
-- n is counted without a distinct aggregate (one hash aggregate over every ping instead of three
-- and a join; at 10M events ~2.5 of 11 CPU s): when a view's pings share one heartbeat, each
-- bucket is an offset from the view's own bucket, never negative, and offsets 0..62 are bits of
-- one BIGINT, n = bit_count(bit_or(...)). The few views whose pings span more buckets or mix
-- heartbeats (a negative one too) are counted exactly, with count(DISTINCT ...) over their pings
-- alone.
-- These rows are narrow on purpose: materialized whole, the page views' ~30 descriptive columns
-- cost ~2 CPU s per 1.8M views (DuckDB's table appends), and they are read once, when written.
WITH pv_order AS (
    SELECT
        _row,
        key_id,
        session_start_us,
        session_end_us,
        tstamp_us,
        local_date,
        coalesce(page_url, '') AS url_key,
        {{page_path_clean}} AS page_path_clean,
        row_number() OVER (PARTITION BY key_id, session_start_us ORDER BY tstamp_us, event_id) AS pv_index
    FROM sessionized
    WHERE is_page_view
),
owners AS (
    SELECT
        key_id,
        session_start_us,
        session_end_us,
        url_key,
        tstamp_us,
        pv_index,
        lead(tstamp_us) OVER (
            PARTITION BY key_id, session_start_us, url_key ORDER BY tstamp_us, pv_index
        ) AS next_us
    FROM pv_order
),
attached AS (
    SELECT
        o.key_id,
        o.session_start_us,
        o.pv_index AS owner_index,
        o.tstamp_us AS owner_us,
        b.tstamp_us,
        b.heartbeat_s,
        b.scroll_depth_pct
    FROM base_events AS b
    JOIN owners AS o
        ON o.key_id = b.key_id
        AND o.url_key = coalesce(b.page_url, '')
        AND b.tstamp_us >= o.tstamp_us
        AND (o.next_us IS NULL OR b.tstamp_us < o.next_us)
        AND b.tstamp_us <= o.session_end_us
    WHERE b.is_ping
),
ping_sums AS (
    SELECT
        key_id,
        session_start_us,
        owner_index,
        bit_count(bit_or(
            CASE WHEN bucket_off BETWEEN 0 AND 62 THEN CAST(1 AS BIGINT) << CAST(bucket_off AS INTEGER) ELSE 0 END
        )) AS bitmap_buckets,
        min(bucket_off) AS min_off,
        max(bucket_off) AS max_off,
        min(heartbeat_s) AS min_heartbeat_s,
        max(heartbeat_s) AS heartbeat_s,
        max(tstamp_us) AS last_ping_us,
        max(scroll_depth_pct) AS max_scroll_depth_pct
    FROM (
        SELECT
            *,
            CAST(floor(tstamp_us / (heartbeat_s * 1000000)) AS BIGINT)
                - CAST(floor(owner_us / (heartbeat_s * 1000000)) AS BIGINT) AS bucket_off
        FROM attached
    ) AS a
    GROUP BY key_id, session_start_us, owner_index
),
-- The ownership join of attached, spelled again for the few views counted exactly: a CTE that
-- both read would be materialized (5.9M rows, ~1.5 CPU s at 10M events).
exact AS (
    SELECT
        o.key_id,
        o.session_start_us,
        o.pv_index AS owner_index,
        count(DISTINCT CAST(floor(b.tstamp_us / (b.heartbeat_s * 1000000)) AS BIGINT)) AS ping_buckets
    FROM ping_sums AS s
    JOIN owners AS o
        ON o.key_id = s.key_id AND o.session_start_us = s.session_start_us AND o.pv_index = s.owner_index
    JOIN base_events AS b
        ON b.key_id = o.key_id
        AND o.url_key = coalesce(b.page_url, '')
        AND b.tstamp_us >= o.tstamp_us
        AND (o.next_us IS NULL OR b.tstamp_us < o.next_us)
        AND b.tstamp_us <= o.session_end_us
    WHERE b.is_ping AND NOT (s.min_heartbeat_s = s.heartbeat_s AND s.min_off >= 0 AND s.max_off <= 62)
    GROUP BY o.key_id, o.session_start_us, o.pv_index
),
ping_stats AS (
    SELECT
        s.key_id,
        s.session_start_us,
        s.owner_index,
        coalesce(e.ping_buckets, s.bitmap_buckets) AS ping_buckets,
        s.heartbeat_s,
        s.last_ping_us,
        s.max_scroll_depth_pct
    FROM ping_sums AS s
    LEFT JOIN exact AS e
        ON e.key_id = s.key_id AND e.session_start_us = s.session_start_us AND e.owner_index = s.owner_index
)

SELECT
    o._row,
    o.key_id,
    o.session_start_us,
    o.local_date AS page_view_date,
    CAST(o.pv_index AS BIGINT) AS page_view_in_session_index,
    o.page_path_clean,
    CASE
        WHEN coalesce(p.ping_buckets, 0) = 0 THEN 0.0
        ELSE p.heartbeat_s * (p.ping_buckets - 1) + {{min_visit_s}}
    END AS engaged_time_s,
    CASE
        WHEN p.last_ping_us IS NULL THEN 0.0
        ELSE (p.last_ping_us - o.tstamp_us) / 1000000.0
    END AS absolute_time_s,
    p.max_scroll_depth_pct
FROM pv_order AS o
LEFT JOIN ping_stats AS p
    ON p.key_id = o.key_id AND p.session_start_us = o.session_start_us AND p.owner_index = o.pv_index
