-- sessions: one row per session of sessionized: the columns of its first event there (app,
-- session id, referrer and campaign, geo and device; see sessionized.sql) and what
-- session_stats computed of it (see there: counts, times, picked ids, conversions, page views,
-- flags). user_key = coalesce(user_id, device_key), device_key that of the first event.
-- Cost: nothing is materialized here; the runner writes each day's rows straight from this join
-- (a day's rows of both sides: session_date is in the join condition, so a filter on it reaches
-- both).
SELECT
    f.app_id,
    f.session_id,
    f.client_session_id,
    coalesce(f.anonymous_id, f.user_id) AS device_key,
    h.anonymous_id,
    h.user_id,
    coalesce(h.user_id, f.anonymous_id, f.user_id) AS user_key,
    h.session_date,
    h.start_tstamp,
    h.end_tstamp,
    h.duration_s,
    h.page_views,
    h.events,
    h.engaged_time_s,
    h.landing_page_path,
    h.exit_page_path,
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
    h.is_bot,
    h.is_bounce,
    h.is_engaged{{cv_columns}}
FROM sessionized AS f
JOIN session_stats AS h ON h.first_row = f._row AND h.session_date = f.local_date
