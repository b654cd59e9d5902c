"""Model options and the rendering of the model SQL files.

The SQL files in ``models/`` are written once in DuckDB's dialect with ``{{name}}``
placeholders for the config-driven parts (conversions, bounce mode, gap, time zone, URL rules).
Rendering is plain string substitution of values that were validated here first: numbers are
formatted by Python, strings are quoted literals; only conversion conditions are SQL fragments,
taken from the (trusted) config file as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clicklake.config import Settings
from clicklake.exceptions import ConfigError

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_PROPERTY_LIST = re.compile(r"^\s*[A-Za-z_][\w.]*(\s*,\s*[A-Za-z_][\w.]*)*\s*$")


@dataclass(frozen=True)
class Conversion:
    """One configured conversion.

    Attributes:
        name: Column prefix (``cv_<name>_...``).
        condition: SQL boolean over an ``events`` row.
        value: SQL expression of the conversion value (``0.0`` when none).
    """

    name: str
    condition: str
    value: str


@dataclass(frozen=True)
class UrlRule:
    """``page_path_clean`` rule: when ``pattern`` (a regex) matches the path, it becomes ``alias``."""

    pattern: str
    alias: str


@dataclass(frozen=True)
class ModelOptions:
    """Everything the models depend on, from ``[models]`` (defaults for keys not configured)."""

    session_gap_s: float = 1800.0
    max_session_length_s: float = 24 * 3600.0
    split_at_midnight: bool = False
    timezone: str = "UTC"
    bounce: str = "single_pageview"
    bounce_min_duration_s: float = 10.0
    engaged_min_duration_s: float = 10.0
    page_ping_heartbeat_s: float = 10.0
    page_ping_min_visit_s: float = 10.0
    include_bots: bool = False
    conversions: tuple[Conversion, ...] = ()
    url_rules: tuple[UrlRule, ...] = ()

    @property
    def gap_us(self) -> int:
        return round(self.session_gap_s * 1_000_000)

    @property
    def max_len_us(self) -> int:
        return round(self.max_session_length_s * 1_000_000)


def _get(section: Any, key: str, default: Any) -> Any:
    value = getattr(section, key, default)
    return default if value is None else value


def value_expression(value: str) -> str:
    """The SQL of a conversion value.

    ``""`` is no value (``0.0``); a comma-separated list of property names is the first of them
    that is a number (``revenue`` alone also falls back to ``total``, as Segment's e-commerce
    spec says); anything else is taken as a SQL expression over the event row.
    """
    if not value.strip():
        return "0.0"
    if _PROPERTY_LIST.match(value):
        names = [n.strip() for n in value.split(",")]
        if names == ["revenue"]:
            names.append("total")
        parts = [
            f"TRY_CAST(json_extract_string(properties, {quote_literal('$.' + n)}) AS DOUBLE)" for n in names
        ]
        return f"coalesce({', '.join(parts)}, 0.0)"
    return f"coalesce(CAST(({value}) AS DOUBLE), 0.0)"


def quote_literal(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def options_from_settings(settings: Settings) -> ModelOptions:
    """Read :class:`ModelOptions` from ``settings.models``.

    Keys not (yet) in the settings model take their documented default.

    Raises:
        ConfigError: Unknown time zone, bad bounce mode, bad URL rule.
    """
    m = settings.models
    tz = str(_get(m, "timezone", "UTC"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"models.timezone {tz!r} is not an IANA time zone (e.g. 'Europe/Paris')") from exc
    bounce = str(_get(m, "bounce", "single_pageview"))
    if bounce not in ("single_pageview", "not_engaged", "min_duration"):
        raise ConfigError(f"models.bounce {bounce!r}: use single_pageview, not_engaged or min_duration")
    conversions = tuple(
        Conversion(c.name, c.condition, value_expression(c.value)) for c in _get(m, "conversions", [])
    )
    rules = []
    for raw in _get(m, "url_rules", []):
        pattern = raw.get("pattern") if isinstance(raw, dict) else getattr(raw, "pattern", None)
        alias = raw.get("alias") if isinstance(raw, dict) else getattr(raw, "alias", None)
        if not isinstance(pattern, str) or not isinstance(alias, str):
            raise ConfigError("each models.url_rules entry needs a string 'pattern' and 'alias'")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"models.url_rules pattern {pattern!r} is not a valid regex: {exc}") from exc
        rules.append(UrlRule(pattern, alias))
    return ModelOptions(
        session_gap_s=float(_get(m, "session_gap_minutes", 30.0)) * 60.0,
        max_session_length_s=float(_get(m, "max_session_length_hours", 24.0)) * 3600.0,
        split_at_midnight=bool(_get(m, "split_at_midnight", False)),
        timezone=tz,
        bounce=bounce,
        bounce_min_duration_s=float(_get(m, "bounce_min_duration_s", 10.0)),
        engaged_min_duration_s=float(_get(m, "engaged_min_duration_s", 10.0)),
        page_ping_heartbeat_s=float(_get(m, "page_ping_heartbeat_s", 10.0)),
        page_ping_min_visit_s=float(_get(m, "page_ping_min_visit_s", 10.0)),
        include_bots=bool(_get(m, "include_bots", False)),
        conversions=conversions,
        url_rules=tuple(rules),
    )


def load_sql(name: str) -> str:
    """The text of ``models/<name>.sql``."""
    return resources.files("clicklake.models").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def render(name: str, values: dict[str, str]) -> str:
    """``models/<name>.sql`` with its ``{{placeholders}}`` replaced by ``values``.

    Raises:
        KeyError: A placeholder has no value.
    """
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], load_sql(name))


def _num(x: float) -> str:
    return repr(float(x))


#: Zone names that are UTC itself (no offset, ever).
_UTC_ZONES = frozenset({"UTC", "Etc/UTC"})


def local_date_sql(column: str, timezone: str) -> str:
    """SQL of the date of the TIMESTAMPTZ ``column`` in ``timezone`` (an IANA name).

    In UTC (the default) the date is the epoch day of the instant, computed from its
    microseconds: ``AT TIME ZONE`` goes through ICU's calendar for every row, ~0.1 µs each,
    about 1 CPU s per 10M events in a model build. Other zones keep ``AT TIME ZONE``.
    """
    if timezone in _UTC_ZONES:
        return f"CAST(make_timestamp(epoch_us({column})) AS DATE)"
    return f"CAST({column} AT TIME ZONE {quote_literal(timezone)} AS DATE)"


def template_values(opts: ModelOptions, window: str = "true") -> dict[str, str]:
    """The placeholder values of every model SQL file for ``opts``.

    Args:
        opts: The model options.
        window: SQL condition on ``derived_tstamp`` selecting the events being recomputed.
    """
    cvs = opts.conversions
    base_cv = "".join(
        f",\n    CASE WHEN ({c.condition}) THEN 1 ELSE 0 END AS cv_{c.name}_hit"
        f",\n    CASE WHEN ({c.condition}) THEN {c.value} ELSE 0.0 END AS cv_{c.name}_val"
        for c in cvs
    )
    base_cv_names = "".join(f", cv_{c.name}_hit, cv_{c.name}_val" for c in cvs)
    agg = "".join(
        f",\n        CAST(sum(cv_{c.name}_hit) AS BIGINT) AS cv_{c.name}_volume"
        f",\n        sum(cv_{c.name}_val) AS cv_{c.name}_value"
        for c in cvs
    )
    cv_any = "(" + " OR ".join(f"cv_{c.name}_volume > 0" for c in cvs) + ")" if cvs else "false"
    cv_cols = "".join(
        f",\n    cv_{c.name}_volume,\n    cv_{c.name}_value,\n    cv_{c.name}_volume > 0 AS cv_{c.name}_converted"
        for c in cvs
    )
    user_cols = "".join(
        f",\n    CAST(sum(cv_{c.name}_volume) AS BIGINT) AS cv_{c.name}_volume"
        f",\n    sum(cv_{c.name}_value) AS cv_{c.name}_value"
        f",\n    bool_or(cv_{c.name}_converted) AS cv_{c.name}_converted"
        for c in cvs
    )
    user_select = "".join(
        f",\n    cv_{c.name}_volume,\n    cv_{c.name}_value,\n    cv_{c.name}_converted" for c in cvs
    )
    if cvs:
        first = cvs[0].name
        kpi = (
            f",\n    CAST(sum(s.cv_{first}_volume) AS BIGINT) AS conversions"
            f",\n    sum(CASE WHEN s.cv_{first}_converted THEN 1 ELSE 0 END) / count(*) AS conversion_rate"
            f",\n    sum(s.cv_{first}_value) AS revenue"
        )
    else:
        kpi = ",\n    CAST(0 AS BIGINT) AS conversions,\n    0.0 AS conversion_rate,\n    0.0 AS revenue"
    kpi += "".join(
        f",\n    CAST(sum(s.cv_{c.name}_volume) AS BIGINT) AS cv_{c.name}_volume"
        f",\n    sum(s.cv_{c.name}_value) AS cv_{c.name}_value"
        f",\n    CAST(sum(CASE WHEN s.cv_{c.name}_converted THEN 1 ELSE 0 END) AS BIGINT) AS cv_{c.name}_sessions"
        f",\n    sum(CASE WHEN s.cv_{c.name}_converted THEN 1 ELSE 0 END) / count(*) AS cv_{c.name}_rate"
        for c in cvs
    )
    path_clean = "page_urlpath"
    if opts.url_rules:
        whens = " ".join(
            f"WHEN regexp_matches(page_urlpath, {quote_literal(r.pattern)}) THEN {quote_literal(r.alias)}"
            for r in opts.url_rules
        )
        path_clean = f"CASE {whens} ELSE page_urlpath END"
    bounce = {
        "single_pageview": "page_views < 2",
        "not_engaged": "NOT is_engaged",
        "min_duration": f"duration_s < {_num(opts.bounce_min_duration_s)}",
    }[opts.bounce]
    return {
        "local_date_of_derived": local_date_sql("d.derived_tstamp", opts.timezone),
        "heartbeat_s": _num(opts.page_ping_heartbeat_s),
        "window": window,
        "bot_filter": "true" if opts.include_bots else "NOT coalesce(is_bot, false)",
        "conversion_columns": base_cv,
        "conversion_names": base_cv_names,
        "gap_us": str(opts.gap_us),
        "max_len_us": str(opts.max_len_us),
        "midnight_clause": " OR local_date <> prev_date" if opts.split_at_midnight else "",
        "midnight_next_clause": " OR next_date <> local_date" if opts.split_at_midnight else "",
        "page_path_clean": path_clean,
        "min_visit_s": _num(opts.page_ping_min_visit_s),
        "cv_aggregates": agg,
        "cv_any": cv_any,
        "cv_columns": cv_cols,
        "engaged_min_duration_s": _num(opts.engaged_min_duration_s),
        "bounce_condition": bounce,
        "cv_user_columns": user_cols,
        "cv_user_select": user_select,
        "kpi_columns": kpi,
    }
