-- sessions: one row per session of sessionized (see sessionized.sql).
-- session_date is the local date (models.timezone) of the first event. Attribution, geo and
-- device fields come from the first event. user_id is the last user_id seen in the session and
-- user_key = coalesce(user_id, device_key); stitching across sessions is done in users through
-- user_mapping, so a finished day never changes when a visitor identifies later.
-- is_engaged: duration_s > models.engaged_min_duration_s, or 2+ page views, or a conversion.
-- is_bounce follows models.bounce (single_pageview | not_engaged | min_duration).
-- Cost: one hash aggregate over the session's rows; the few events at the instants that matter
-- (the start, the last user_id, the first anonymous_id) are then ranked by event_id, instead of
-- sorting every event of every session.
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
ranked_picks AS (
    SELECT
        p.*,
        CASE WHEN at_start THEN row_number() OVER (
            PARTITION BY key_id, session_start_us, at_start ORDER BY event_id
        ) END AS start_rank,
        CASE WHEN at_user THEN row_number() OVER (
            PARTITION BY key_id, session_start_us, at_user ORDER BY event_id DESC NULLS FIRST
        ) END AS user_rank,
        CASE WHEN at_anonymous THEN row_number() OVER (
            PARTITION BY key_id, session_start_us, at_anonymous ORDER BY event_id
        ) END AS anonymous_rank
    FROM picks AS p
),
firsts AS (
    SELECT
        key_id,
        session_start_us,
        max(CASE WHEN start_rank = 1 THEN app_id END) AS app_id,
        max(CASE WHEN start_rank = 1 THEN session_id END) AS session_id,
        max(CASE WHEN start_rank = 1 THEN client_session_id END) AS client_session_id,
        max(CASE WHEN start_rank = 1 THEN coalesce(anonymous_id, user_id) END) AS device_key,
        max(CASE WHEN anonymous_rank = 1 THEN anonymous_id END) AS anonymous_id,
        max(CASE WHEN user_rank = 1 THEN user_id END) AS user_id,
        max(CASE WHEN start_rank = 1 THEN local_date END) AS session_date,
        max(CASE WHEN start_rank = 1 THEN page_referrer END) AS page_referrer,
        max(CASE WHEN start_rank = 1 THEN refr_urlhost END) AS refr_urlhost,
        max(CASE WHEN start_rank = 1 THEN refr_medium END) AS refr_medium,
        max(CASE WHEN start_rank = 1 THEN refr_source END) AS refr_source,
        max(CASE WHEN start_rank = 1 THEN refr_term END) AS refr_term,
        max(CASE WHEN start_rank = 1 THEN mkt_source END) AS mkt_source,
        max(CASE WHEN start_rank = 1 THEN mkt_medium END) AS mkt_medium,
        max(CASE WHEN start_rank = 1 THEN mkt_campaign END) AS mkt_campaign,
        max(CASE WHEN start_rank = 1 THEN mkt_term END) AS mkt_term,
        max(CASE WHEN start_rank = 1 THEN mkt_content END) AS mkt_content,
        max(CASE WHEN start_rank = 1 THEN mkt_clickid END) AS mkt_clickid,
        max(CASE WHEN start_rank = 1 THEN mkt_network END) AS mkt_network,
        max(CASE WHEN start_rank = 1 THEN default_channel_group END) AS default_channel_group,
        max(CASE WHEN start_rank = 1 THEN geo_country END) AS geo_country,
        max(CASE WHEN start_rank = 1 THEN geo_region END) AS geo_region,
        max(CASE WHEN start_rank = 1 THEN geo_city END) AS geo_city,
        max(CASE WHEN start_rank = 1 THEN br_family END) AS br_family,
        max(CASE WHEN start_rank = 1 THEN os_family END) AS os_family,
        max(CASE WHEN start_rank = 1 THEN dvce_family END) AS dvce_family,
        max(CASE WHEN start_rank = 1 THEN dvce_class END) AS dvce_class
    FROM ranked_picks
    GROUP BY key_id, session_start_us
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
