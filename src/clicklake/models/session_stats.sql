-- session_stats: what sessions computes of each session of sessionized (see sessionized.sql),
-- keyed by (key_id, session_start_us): the row of its first event in sessionized (first_row),
-- counts, times, the picked anonymous_id and user_id, conversions, page views, landing and exit
-- pages, duration and flags. sessions (the table's rows) joins these to the first event's own
-- columns in sessionized.
-- session_date is the local date (models.timezone) of the first event. user_id is the last
-- user_id seen in the session (stitching across sessions is done in users through user_mapping,
-- so a finished day never changes when a visitor identifies later). The first event is, of those
-- at the session's start, the one with the smallest event_id.
-- is_engaged: duration_s > models.engaged_min_duration_s, or 2+ page views, or a conversion.
-- is_bounce follows models.bounce (single_pageview | not_engaged | min_duration).
-- Cost: one hash aggregate over the events of base_events placed in their session by time range;
-- of the few events at the instants that matter (the start, from sessionized; the last user_id
-- and the first anonymous_id) the one with the smallest (largest, for the user_id) event_id is
-- then picked, instead of sorting every event of every session. The first anonymous_id is nearly
-- always at the start, picked with the first row in the same aggregate over the start rows: only
-- a session whose start rows lack one looks for it in base_events.
-- Everything here is narrow (chosen is kept MATERIALIZED so that DuckDB joins it as it is); the
-- descriptive columns of the first event are read once, when the sessions are written. The exit
-- page is the page view with the largest index (arg_max; page_path_clean is never NULL), without
-- a window over the page views.
WITH start_rows AS (
    SELECT key_id, session_start_us, session_end_us, _row, local_date, event_id, anonymous_id
    FROM sessionized
    WHERE tstamp_us = session_start_us
),
picks AS (
    SELECT
        key_id,
        session_start_us,
        max(session_end_us) AS session_end_us,
        min(local_date) AS session_date,
        arg_min(_row, {'no_event_id': event_id IS NULL, 'event_id': event_id}) AS first_row,
        arg_min(anonymous_id, {'no_event_id': event_id IS NULL, 'event_id': event_id})
            FILTER (WHERE anonymous_id IS NOT NULL) AS start_anonymous_id
    FROM start_rows
    GROUP BY key_id, session_start_us
),
counts AS (
    SELECT
        n.key_id,
        n.session_start_us,
        count(*) AS events,
        min(b.tstamp) AS start_tstamp,
        max(b.tstamp) AS end_tstamp,
        max(b.tstamp_us) AS end_us,
        max(CASE WHEN b.user_id IS NOT NULL THEN b.tstamp_us END) AS user_us,
        min(CASE WHEN b.anonymous_id IS NOT NULL THEN b.tstamp_us END) AS anonymous_us,
        bool_or(b.is_bot) AS is_bot{{cv_aggregates}}
    FROM base_events AS b
    JOIN picks AS n
        ON n.key_id = b.key_id AND b.tstamp_us >= n.session_start_us AND b.tstamp_us <= n.session_end_us
    GROUP BY n.key_id, n.session_start_us
),
at_user AS (
    SELECT c.key_id, c.session_start_us, b.event_id, b.user_id
    FROM counts AS c
    JOIN base_events AS b ON b.key_id = c.key_id AND b.tstamp_us = c.user_us
    WHERE b.user_id IS NOT NULL
),
-- The pick by event_id in one aggregate: a row without one counts only when no other is there,
-- as min/max (which skip NULLs) and a join back on it did.
user_pick AS (
    SELECT
        key_id,
        session_start_us,
        arg_max(user_id, {'has_event_id': event_id IS NOT NULL, 'event_id': event_id}) AS user_id
    FROM at_user
    GROUP BY key_id, session_start_us
),
-- A session whose start rows have no anonymous_id takes the first one after its start (rare).
late_anonymous AS (
    SELECT
        c.key_id,
        c.session_start_us,
        arg_min(b.anonymous_id, {'no_event_id': b.event_id IS NULL, 'event_id': b.event_id}) AS anonymous_id
    FROM counts AS c
    JOIN base_events AS b ON b.key_id = c.key_id AND b.tstamp_us = c.anonymous_us
    WHERE c.anonymous_us > c.session_start_us AND b.anonymous_id IS NOT NULL
    GROUP BY c.key_id, c.session_start_us
),
chosen AS MATERIALIZED (
    SELECT
        p.key_id,
        p.session_start_us,
        p.session_date,
        p.first_row,
        coalesce(p.start_anonymous_id, a.anonymous_id) AS anonymous_id,
        u.user_id,
        c.* EXCLUDE (key_id, session_start_us, user_us, anonymous_us)
    FROM picks AS p
    JOIN counts AS c ON c.key_id = p.key_id AND c.session_start_us = p.session_start_us
    LEFT JOIN user_pick AS u ON u.key_id = p.key_id AND u.session_start_us = p.session_start_us
    LEFT JOIN late_anonymous AS a ON a.key_id = p.key_id AND a.session_start_us = p.session_start_us
),
pv AS (
    SELECT
        key_id,
        session_start_us,
        count(*) AS page_views,
        sum(engaged_time_s) AS engaged_time_s,
        max(CASE WHEN page_view_in_session_index = 1 THEN page_path_clean END) AS landing_page_path,
        arg_max(page_path_clean, page_view_in_session_index) AS exit_page_path
    FROM page_view_stats
    GROUP BY key_id, session_start_us
),
joined AS (
    SELECT
        h.*,
        coalesce(pv.page_views, 0) AS page_views,
        coalesce(pv.engaged_time_s, 0.0) AS engaged_time_s,
        pv.landing_page_path,
        pv.exit_page_path,
        (h.end_us - h.session_start_us) / 1000000.0 AS duration_s
    FROM chosen AS h
    LEFT JOIN pv ON pv.key_id = h.key_id AND pv.session_start_us = h.session_start_us
),
flags AS (
    SELECT
        j.*,
        (duration_s > {{engaged_min_duration_s}} OR page_views >= 2 OR {{cv_any}}) AS is_engaged
    FROM joined AS j
)
SELECT
    f.*,
    ({{bounce_condition}}) AS is_bounce
FROM flags AS f
