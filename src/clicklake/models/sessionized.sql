-- sessionized: the events the models show (page views, and the events at a session's start),
-- with their session and descriptive columns.
-- Per (app_id, session_key) -- the client session id when sent, else the device key
-- coalesce(anonymous_id, user_id) -- events ordered by derived time form runs: a new run starts
-- after models.session_gap_minutes of inactivity (and, with models.split_at_midnight, when the
-- local date changes). A run longer than models.max_session_length_hours is cut into pieces of
-- that length counted from the run's first event. One piece is one session; its id is
-- md5(app_id | session_key | first event time in microseconds). Sessions made only of page pings
-- are dropped (a tab left open is not a visit). Cuts depend on times alone: events at the same
-- instant always share a session.
-- Cost: the cuts are computed over narrow rows (key_id, time; see base_events) in one window pass
-- (one sort of two integers): each row sees its neighbours' times, so the rows that start or end
-- a run are known without a running max over every row; rows at the same instant need no
-- grouping first, as the second of them is never a cut. Only those bound rows (about two a run)
-- are paired into runs. A run is kept when a semi join finds a non-ping event in it (a running
-- count of them in the window cost a third of the window's CPU); the rare runs longer than
-- max_session_length are cut into pieces over their own rows, which count theirs. A session is (key_id, session_start_us) in the models and
-- spans session_start_us..session_end_us; the other rows of base_events find theirs by time range
-- where they are counted (page pings in page_views, every event in sessions), so no copy of all
-- the rows is made here. Only the shown rows get the descriptive columns, read from the row of
-- src_events that base_events kept (joined on _row, its place in the files: an integer, and
-- exactly the copy chosen, so no copy is ranked again here), and session_id. The columns only
-- sessions shows (the first event's term, content, click id, network, region, city, browser,
-- OS and device family) are kept for the rows at a session's start alone: the others never
-- show them, and each string column kept costs about 0.1 CPU s per 2M rows.
WITH points AS (
    SELECT key_id, tstamp_us, local_date
    FROM base_events
),
edges AS (
    SELECT
        p.*,
        lag(tstamp_us) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS prev_us,
        lag(local_date) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS prev_date,
        lead(tstamp_us) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS next_us,
        lead(local_date) OVER (PARTITION BY key_id ORDER BY tstamp_us) AS next_date
    FROM points AS p
),
bounds AS (
    SELECT
        key_id,
        tstamp_us,
        prev_us IS NULL OR tstamp_us - prev_us >= {{gap_us}}{{midnight_clause}} AS is_start,
        next_us IS NULL OR next_us - tstamp_us >= {{gap_us}}{{midnight_next_clause}} AS is_end
    FROM edges
    WHERE prev_us IS NULL OR tstamp_us - prev_us >= {{gap_us}}{{midnight_clause}}
        OR next_us IS NULL OR next_us - tstamp_us >= {{gap_us}}{{midnight_next_clause}}
),
run_ends AS (
    SELECT
        key_id,
        tstamp_us AS run_end_us,
        CASE WHEN is_start THEN tstamp_us ELSE lag(tstamp_us) OVER (PARTITION BY key_id ORDER BY tstamp_us, is_end) END
            AS run_start_us,
        is_end
    FROM bounds
),
runs AS (
    SELECT
        key_id,
        run_start_us,
        run_end_us
    FROM run_ends
    WHERE is_end
),
long_pieces AS (
    SELECT
        p.key_id,
        min(p.tstamp_us) AS session_start_us,
        max(p.tstamp_us) AS session_end_us,
        sum(CASE WHEN p.is_ping THEN 0 ELSE 1 END) AS non_ping_events
    FROM base_events AS p
    JOIN runs AS r
        ON r.key_id = p.key_id AND p.tstamp_us >= r.run_start_us AND p.tstamp_us <= r.run_end_us
    WHERE r.run_end_us - r.run_start_us >= {{max_len_us}}
    GROUP BY p.key_id, r.run_start_us, CAST(floor((p.tstamp_us - r.run_start_us) / {{max_len_us}}) AS BIGINT)
),
named AS (
    SELECT r.key_id, r.run_start_us AS session_start_us, r.run_end_us AS session_end_us
    FROM runs AS r
    SEMI JOIN base_events AS p
        ON p.key_id = r.key_id AND p.tstamp_us >= r.run_start_us AND p.tstamp_us <= r.run_end_us AND NOT p.is_ping
    WHERE r.run_end_us - r.run_start_us < {{max_len_us}}
    UNION ALL
    SELECT key_id, session_start_us, session_end_us
    FROM long_pieces
    WHERE non_ping_events > 0
),
-- What only the pings and the session counts read (they take it from base_events) is not carried;
-- the URL is read below with the descriptive columns.
sessioned AS (
    SELECT
        b.* EXCLUDE (is_ping, heartbeat_s, scroll_depth_pct, page_url{{conversion_names}}),
        n.session_start_us,
        n.session_end_us
    FROM base_events AS b
    JOIN named AS n
        ON n.key_id = b.key_id AND b.tstamp_us >= n.session_start_us AND b.tstamp_us <= n.session_end_us
    WHERE b.is_page_view OR b.tstamp_us = n.session_start_us
),
matched AS (
    SELECT
        s.*,
        e.app_id,
        CASE
            WHEN e.session_id IS NOT NULL THEN 's:' || e.session_id
            ELSE 'd:' || coalesce(e.anonymous_id, e.user_id)
        END AS session_key,
        e.session_id AS client_session_id,
        CASE WHEN s.is_page_view THEN e.event_type END AS event_type,
        CASE WHEN s.is_page_view THEN e.event_name END AS event_name,
        e.page_url,
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
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.refr_term END AS refr_term,
        e.mkt_source,
        e.mkt_medium,
        e.mkt_campaign,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.mkt_term END AS mkt_term,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.mkt_content END AS mkt_content,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.mkt_clickid END AS mkt_clickid,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.mkt_network END AS mkt_network,
        e.default_channel_group,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.br_family END AS br_family,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.os_family END AS os_family,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.dvce_family END AS dvce_family,
        e.dvce_class,
        e.geo_country,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.geo_region END AS geo_region,
        CASE WHEN s.tstamp_us = s.session_start_us THEN e.geo_city END AS geo_city
    FROM src_events AS e
    JOIN sessioned AS s ON s._row = e._row
)
SELECT
    event_id,
    key_id,
    session_start_us,
    session_end_us,
    md5(app_id || '|' || session_key || '|' || CAST(session_start_us AS VARCHAR)) AS session_id,
    * EXCLUDE (event_id, key_id, session_start_us, session_end_us, session_key)
FROM matched
