-- daily_kpis: per app_id and session_date (local, models.timezone). users = distinct user_key
-- with a session that day; new_users = those whose first session ever is that day. Rates are
-- over sessions (NULL-free: days without sessions have no row). conversions, conversion_rate and
-- revenue are those of the first configured conversion; every conversion has its cv_ columns.
WITH firsts AS (
    SELECT app_id, user_key, min(session_date) AS first_date
    FROM sessions_all
    GROUP BY app_id, user_key
)
SELECT
    s.app_id,
    s.session_date AS "date",
    count(DISTINCT s.user_key) AS users,
    count(DISTINCT CASE WHEN f.first_date = s.session_date THEN s.user_key END) AS new_users,
    count(*) AS sessions,
    CAST(sum(s.page_views) AS BIGINT) AS page_views,
    CAST(sum(CASE WHEN s.is_bounce THEN 1 ELSE 0 END) AS BIGINT) AS bounces,
    sum(CASE WHEN s.is_bounce THEN 1 ELSE 0 END) / count(*) AS bounce_rate,
    CAST(sum(CASE WHEN s.is_engaged THEN 1 ELSE 0 END) AS BIGINT) AS engaged_sessions,
    sum(CASE WHEN s.is_engaged THEN 1 ELSE 0 END) / count(*) AS engagement_rate,
    avg(s.duration_s) AS avg_session_duration_s{{kpi_columns}}
FROM sessions_all AS s
JOIN firsts AS f ON f.app_id = s.app_id AND f.user_key = s.user_key
GROUP BY s.app_id, s.session_date
