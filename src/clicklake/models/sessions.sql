-- sessions: one row per session of sessionized (see sessionized.sql).
-- session_date is the local date (models.timezone) of the first event. Attribution, geo and
-- device fields come from the first event. user_id is the last user_id seen in the session and
-- user_key = coalesce(user_id, device_key); stitching across sessions is done in users through
-- user_mapping, so a finished day never changes when a visitor identifies later.
-- is_engaged: duration_s > models.engaged_min_duration_s, or 2+ page views, or a conversion.
-- is_bounce follows models.bounce (single_pageview | not_engaged | min_duration).
-- Cost: one hash aggregate over the session's rows; of the few events at the instants that matter
-- (the start, the last user_id, the first anonymous_id) the one with the smallest (largest, for
-- the user_id) event_id is then picked, instead of sorting every event of every session.
WITH counts AS (
    SELECT
        key_id,
        session_start_us,
        count(*) AS events,
        min(tstamp) AS start_tstamp,
        max(tstamp) AS end_tstamp,
        max(tstamp_us) AS end_us,
        max(CASE WHEN user_id IS NOT NULL THEN tstamp_us END) AS user_us,
        min(CASE WHEN anonymous_id IS NOT NULL THEN tstamp_us END) AS anonymous_us,
        bool_or(is_bot) AS is_bot{{cv_aggregates}}
    FROM sessionized
    GROUP BY key_id, session_start_us
),
picks AS (
    SELECT
        s.*,
        s.tstamp_us = s.session_start_us AS at_start,
        (s.tstamp_us = c.user_us AND s.user_id IS NOT NULL) AS at_user,
        (s.tstamp_us = c.anonymous_us AND s.anonymous_id IS NOT NULL) AS at_anonymous
    FROM sessionized AS s
    JOIN counts AS c ON c.key_id = s.key_id AND c.session_start_us = s.session_start_us
    WHERE s.tstamp_us = s.session_start_us OR s.tstamp_us = c.user_us OR s.tstamp_us = c.anonymous_us
),
picked AS (
    SELECT
        key_id,
        session_start_us,
        min(CASE WHEN at_start THEN event_id END) AS start_event_id,
        max(CASE WHEN at_user THEN event_id END) AS user_event_id,
        min(CASE WHEN at_anonymous THEN event_id END) AS anonymous_event_id
    FROM picks
    GROUP BY key_id, session_start_us
),
chosen AS (
    SELECT
        p.*,
        p.at_start AND p.event_id IS NOT DISTINCT FROM c.start_event_id AS is_first,
        p.at_user AND p.event_id IS NOT DISTINCT FROM c.user_event_id AS is_last_user,
        p.at_anonymous AND p.event_id IS NOT DISTINCT FROM c.anonymous_event_id AS is_first_anonymous
    FROM picks AS p
    JOIN picked AS c ON c.key_id = p.key_id AND c.session_start_us = p.session_start_us
),
firsts AS (
    SELECT
        f.key_id,
        f.session_start_us,
        f.app_id,
        f.session_id,
        f.client_session_id,
        coalesce(f.anonymous_id, f.user_id) AS device_key,
        a.anonymous_id,
        u.user_id,
        f.local_date AS session_date,
        f.page_referrer,
        f.refr_urlhost,
        f.refr_medium,
        f.refr_source,
        f.refr_term,
        f.mkt_source,
        f.mkt_medium,
        f.mkt_campaign,
        f.mkt_term,
        f.mkt_content,
        f.mkt_clickid,
        f.mkt_network,
        f.default_channel_group,
        f.geo_country,
        f.geo_region,
        f.geo_city,
        f.br_family,
        f.os_family,
        f.dvce_family,
        f.dvce_class
    FROM chosen AS f
    LEFT JOIN chosen AS u
        ON u.is_last_user AND u.key_id = f.key_id AND u.session_start_us = f.session_start_us
    LEFT JOIN chosen AS a
        ON a.is_first_anonymous AND a.key_id = f.key_id AND a.session_start_us = f.session_start_us
    WHERE f.is_first
),
agg AS (
    SELECT
        f.app_id,
        f.session_id,
        f.client_session_id,
        f.device_key,
        f.anonymous_id,
        f.user_id,
        c.start_tstamp,
        c.end_tstamp,
        c.session_start_us AS start_us,
        c.end_us,
        f.session_date,
        c.events,
        f.page_referrer,
        f.refr_urlhost,
        f.refr_medium,
        f.refr_source,
        f.refr_term,
        f.mkt_source,
        f.mkt_medium,
        f.mkt_campaign,
        f.mkt_term,
        f.mkt_content,
        f.mkt_clickid,
        f.mkt_network,
        f.default_channel_group,
        f.geo_country,
        f.geo_region,
        f.geo_city,
        f.br_family,
        f.os_family,
        f.dvce_family,
        f.dvce_class,
        c.* EXCLUDE (key_id, session_start_us, events, start_tstamp, end_tstamp, end_us, user_us, anonymous_us)
    FROM counts AS c
    JOIN firsts AS f ON f.key_id = c.key_id AND f.session_start_us = c.session_start_us
),
pv AS (
    SELECT
        session_id,
        count(*) AS page_views,
        sum(engaged_time_s) AS engaged_time_s,
        max(CASE WHEN page_view_in_session_index = 1 THEN page_path_clean END) AS landing_page_path,
        max(CASE WHEN from_end = 1 THEN page_path_clean END) AS exit_page_path
    FROM (
        SELECT
            p.*,
            row_number() OVER (PARTITION BY session_id ORDER BY page_view_in_session_index DESC) AS from_end
        FROM page_views_new AS p
    ) AS ranked_pv
    GROUP BY session_id
),
joined AS (
    SELECT
        a.*,
        coalesce(pv.page_views, 0) AS page_views,
        coalesce(pv.engaged_time_s, 0.0) AS engaged_time_s,
        pv.landing_page_path,
        pv.exit_page_path,
        (a.end_us - a.start_us) / 1000000.0 AS duration_s
    FROM agg AS a
    LEFT JOIN pv ON pv.session_id = a.session_id
),
flags AS (
    SELECT
        j.*,
        (duration_s > {{engaged_min_duration_s}} OR page_views >= 2 OR {{cv_any}}) AS is_engaged
    FROM joined AS j
)
SELECT
    app_id,
    session_id,
    client_session_id,
    device_key,
    anonymous_id,
    user_id,
    coalesce(user_id, device_key) AS user_key,
    session_date,
    start_tstamp,
    end_tstamp,
    duration_s,
    page_views,
    events,
    engaged_time_s,
    landing_page_path,
    exit_page_path,
    page_referrer,
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
    geo_country,
    geo_region,
    geo_city,
    br_family,
    os_family,
    dvce_family,
    dvce_class,
    is_bot,
    ({{bounce_condition}}) AS is_bounce,
    is_engaged{{cv_columns}}
FROM flags
