-- sessions: one row per session of sessionized (see sessionized.sql).
-- session_date is the local date (models.timezone) of the first event. Attribution, geo and
-- device fields come from the first event. user_id is the last user_id seen in the session and
-- user_key = coalesce(user_id, device_key); stitching across sessions is done in users through
-- user_mapping, so a finished day never changes when a visitor identifies later.
-- is_engaged: duration_s > models.engaged_min_duration_s, or 2+ page views, or a conversion.
-- is_bounce follows models.bounce (single_pageview | not_engaged | min_duration).
WITH ev AS (
    SELECT
        s.*,
        row_number() OVER (PARTITION BY session_id ORDER BY tstamp_us, event_id) AS ev_index,
        last_value(user_id IGNORE NULLS) OVER (
            PARTITION BY session_id
            ORDER BY tstamp_us, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
        ) AS last_user_id,
        first_value(anonymous_id IGNORE NULLS) OVER (
            PARTITION BY session_id
            ORDER BY tstamp_us, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
        ) AS first_anonymous_id
    FROM sessionized AS s
),
agg AS (
    SELECT
        app_id,
        session_id,
        max(CASE WHEN ev_index = 1 THEN client_session_id END) AS client_session_id,
        max(CASE WHEN ev_index = 1 THEN device_key END) AS device_key,
        max(first_anonymous_id) AS anonymous_id,
        max(last_user_id) AS user_id,
        min(tstamp) AS start_tstamp,
        max(tstamp) AS end_tstamp,
        min(tstamp_us) AS start_us,
        max(tstamp_us) AS end_us,
        max(CASE WHEN ev_index = 1 THEN local_date END) AS session_date,
        count(*) AS events,
        max(CASE WHEN ev_index = 1 THEN page_referrer END) AS page_referrer,
        max(CASE WHEN ev_index = 1 THEN refr_urlhost END) AS refr_urlhost,
        max(CASE WHEN ev_index = 1 THEN refr_medium END) AS refr_medium,
        max(CASE WHEN ev_index = 1 THEN refr_source END) AS refr_source,
        max(CASE WHEN ev_index = 1 THEN refr_term END) AS refr_term,
        max(CASE WHEN ev_index = 1 THEN mkt_source END) AS mkt_source,
        max(CASE WHEN ev_index = 1 THEN mkt_medium END) AS mkt_medium,
        max(CASE WHEN ev_index = 1 THEN mkt_campaign END) AS mkt_campaign,
        max(CASE WHEN ev_index = 1 THEN mkt_term END) AS mkt_term,
        max(CASE WHEN ev_index = 1 THEN mkt_content END) AS mkt_content,
        max(CASE WHEN ev_index = 1 THEN mkt_clickid END) AS mkt_clickid,
        max(CASE WHEN ev_index = 1 THEN mkt_network END) AS mkt_network,
        max(CASE WHEN ev_index = 1 THEN default_channel_group END) AS default_channel_group,
        max(CASE WHEN ev_index = 1 THEN geo_country END) AS geo_country,
        max(CASE WHEN ev_index = 1 THEN geo_region END) AS geo_region,
        max(CASE WHEN ev_index = 1 THEN geo_city END) AS geo_city,
        max(CASE WHEN ev_index = 1 THEN br_family END) AS br_family,
        max(CASE WHEN ev_index = 1 THEN os_family END) AS os_family,
        max(CASE WHEN ev_index = 1 THEN dvce_family END) AS dvce_family,
        max(CASE WHEN ev_index = 1 THEN dvce_class END) AS dvce_class,
        bool_or(is_bot) AS is_bot{{cv_aggregates}}
    FROM ev
    GROUP BY app_id, session_id
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
