-- users: one row per stitched user: coalesce(user_mapping.user_id of the session's anonymous_id,
-- the session's user_key). First-touch fields come from the user's first session (by start time,
-- then session_id).
-- Cost: one hash aggregate; the first session's fields are taken with arg_min over a struct of
-- them, keyed by (start time, session_id), instead of numbering every user's sessions in a window
-- that carried them all (at 10M events ~1 of 2.8 CPU s).
WITH s AS (
    SELECT
        s.*,
        coalesce(m.user_id, s.user_key) AS stitched_user_key
    FROM sessions_all AS s
    LEFT JOIN user_mapping_new AS m
        ON m.app_id = s.app_id AND m.anonymous_id = s.anonymous_id
),
per_user AS (
    SELECT
        app_id,
        stitched_user_key,
        min(start_tstamp) AS first_seen_tstamp,
        max(end_tstamp) AS last_seen_tstamp,
        min(session_date) AS first_session_date,
        max(session_date) AS last_session_date,
        count(*) AS sessions,
        CAST(sum(page_views) AS BIGINT) AS page_views,
        sum(engaged_time_s) AS engaged_time_s,
        arg_min(
            {
                'landing_page_path': landing_page_path,
                'page_referrer': page_referrer,
                'refr_source': refr_source,
                'refr_medium': refr_medium,
                'mkt_source': mkt_source,
                'mkt_medium': mkt_medium,
                'mkt_campaign': mkt_campaign,
                'default_channel_group': default_channel_group
            },
            {'start_tstamp': start_tstamp, 'session_id': session_id}
        ) AS first_session{{cv_user_columns}}
    FROM s
    GROUP BY app_id, stitched_user_key
)
SELECT
    app_id,
    stitched_user_key AS user_key,
    first_seen_tstamp,
    last_seen_tstamp,
    first_session_date,
    last_session_date,
    sessions,
    page_views,
    engaged_time_s,
    first_session.landing_page_path AS first_landing_page_path,
    first_session.page_referrer AS first_page_referrer,
    first_session.refr_source AS first_refr_source,
    first_session.refr_medium AS first_refr_medium,
    first_session.mkt_source AS first_mkt_source,
    first_session.mkt_medium AS first_mkt_medium,
    first_session.mkt_campaign AS first_mkt_campaign,
    first_session.default_channel_group AS first_default_channel_group{{cv_user_select}}
FROM per_user
