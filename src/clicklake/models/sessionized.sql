-- sessionized: base_events with their session.
-- Per (app_id, session_key) -- the client session id when sent, else the device key
-- coalesce(anonymous_id, user_id) -- events ordered by (derived time, event_id) form runs: a new
-- run starts after models.session_gap_minutes of inactivity (and, with models.split_at_midnight,
-- when the local date changes). A run longer than models.max_session_length_hours is cut into
-- pieces of that length counted from the run's first event. One piece is one session; its id is
-- md5(app_id | session_key | first event time in microseconds). Sessions made only of page pings
-- are dropped (a tab left open is not a visit).
-- The window passes run over the few columns sessions are cut by; the wide rows join back at
-- the end (event_id is unique in base_events), so no pass sorts URLs, referrers or JSON.
WITH narrow AS (
    SELECT event_id, app_id, session_key, tstamp_us, local_date, is_ping FROM base_events
),
ordered AS (
    SELECT
        b.*,
        lag(tstamp_us) OVER w AS prev_us,
        lag(local_date) OVER w AS prev_date
    FROM narrow AS b
    WINDOW w AS (PARTITION BY app_id, session_key ORDER BY tstamp_us, event_id)
),
flagged AS (
    SELECT
        o.*,
        CASE
            WHEN prev_us IS NULL OR tstamp_us - prev_us >= {{gap_us}}{{midnight_clause}} THEN 1
            ELSE 0
        END AS is_new_run
    FROM ordered AS o
),
runs AS (
    SELECT
        f.*,
        sum(is_new_run) OVER (
            PARTITION BY app_id, session_key
            ORDER BY tstamp_us, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS run_no
    FROM flagged AS f
),
pieces AS (
    SELECT
        r.*,
        CAST(
            floor((tstamp_us - min(tstamp_us) OVER (PARTITION BY app_id, session_key, run_no)) / {{max_len_us}})
            AS BIGINT
        ) AS piece_no
    FROM runs AS r
),
keyed AS (
    SELECT
        p.*,
        min(tstamp_us) OVER (PARTITION BY app_id, session_key, run_no, piece_no) AS session_start_us,
        sum(CASE WHEN is_ping THEN 0 ELSE 1 END) OVER (
            PARTITION BY app_id, session_key, run_no, piece_no
        ) AS non_ping_events
    FROM pieces AS p
)
SELECT
    b.*,
    k.prev_us,
    k.prev_date,
    k.is_new_run,
    k.run_no,
    k.piece_no,
    k.session_start_us,
    k.non_ping_events,
    md5(b.app_id || '|' || b.session_key || '|' || CAST(k.session_start_us AS VARCHAR)) AS session_id
FROM keyed AS k
JOIN base_events AS b ON b.event_id = k.event_id
WHERE k.non_ping_events > 0
