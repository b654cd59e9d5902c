-- page_views: one row per page or screen view (page_view_id = its event_id): its columns in
-- sessionized and what page_view_stats computed of it (see there: engaged time, index, cleaned
-- path).
-- Cost: nothing is materialized here; the runner writes each day's rows straight from this join
-- (a day's rows of both sides: page_view_date is in the join condition, so a filter on it reaches
-- both).
SELECT
    c.event_id AS page_view_id,
    c.app_id,
    c.session_id,
    c.client_session_id,
    coalesce(c.anonymous_id, c.user_id) AS device_key,
    c.anonymous_id,
    c.user_id,
    c.local_date AS page_view_date,
    c.tstamp AS derived_tstamp,
    s.page_view_in_session_index,
    c.event_type,
    c.event_name AS page_name,
    c.page_url,
    c.page_urlhost,
    c.page_urlpath,
    c.page_urlquery,
    s.page_path_clean,
    c.page_title,
    c.page_referrer,
    c.refr_urlhost,
    c.refr_medium,
    c.refr_source,
    c.mkt_source,
    c.mkt_medium,
    c.mkt_campaign,
    c.default_channel_group,
    c.dvce_class,
    c.geo_country,
    s.engaged_time_s,
    s.absolute_time_s,
    s.max_scroll_depth_pct,
    c.is_bot
FROM sessionized AS c
JOIN page_view_stats AS s ON s._row = c._row AND s.page_view_date = c.local_date
WHERE c.is_page_view
