-- users: one row per stitched user: coalesce(user_mapping.user_id of the session's anonymous_id,
-- the session's user_key). First-touch fields come from the user's first session (by start time,
-- then session_id).
WITH s AS (
    SELECT
        s.*,
        coalesce(m.user_id, s.user_key) AS stitched_user_key
    FROM sessions_all AS s
    LEFT JOIN user_mapping_new AS m
        ON m.app_id = s.app_id AND m.anonymous_id = s.anonymous_id
),
ranked AS (
    SELECT
        s.*,
        row_number() OVER (PARTITION BY app_id, stitched_user_key ORDER BY start_tstamp, session_id) AS rn
    FROM s
)
SELECT
    app_id,
    stitched_user_key AS user_key,
    min(start_tstamp) AS first_seen_tstamp,
    max(end_tstamp) AS last_seen_tstamp,
    min(session_date) AS first_session_date,
    max(session_date) AS last_session_date,
    count(*) AS sessions,
    CAST(sum(page_views) AS BIGINT) AS page_views,
    sum(engaged_time_s) AS engaged_time_s,
    max(CASE WHEN rn = 1 THEN landing_page_path END) AS first_landing_page_path,
    max(CASE WHEN rn = 1 THEN page_referrer END) AS first_page_referrer,
    max(CASE WHEN rn = 1 THEN refr_source END) AS first_refr_source,
    max(CASE WHEN rn = 1 THEN refr_medium END) AS first_refr_medium,
    max(CASE WHEN rn = 1 THEN mkt_source END) AS first_mkt_source,
    max(CASE WHEN rn = 1 THEN mkt_medium END) AS first_mkt_medium,
    max(CASE WHEN rn = 1 THEN mkt_campaign END) AS first_mkt_campaign,
    max(CASE WHEN rn = 1 THEN default_channel_group END) AS first_default_channel_group{{cv_user_columns}}
FROM ranked
GROUP BY app_id, stitched_user_key
