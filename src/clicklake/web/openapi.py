"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from clicklake import __version__
from clicklake.web.dashboard import DIMENSIONS, FUNNEL_BREAKDOWNS


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_DATE = {"type": "string", "format": "date"}
FILTERS = [
    _q("app", {"type": "string"}, "Only this app (one the token sees)."),
    _q("start", _DATE, "First day, YYYY-MM-DD (default: 6 days before end)."),
    _q("end", _DATE, "Last day, YYYY-MM-DD (default: the latest day with data)."),
    _q("channel", {"type": "string"}, "Only this default channel group ('(none)' for none)."),
    _q("device", {"type": "string"}, "Only this device class ('(none)' for none)."),
]
_ERR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    str(code): {"description": text, "content": {"application/json": {"schema": _ERR}}}
    for code, text in (
        (400, "Bad input (a parameter, or SQL DuckDB refuses, or a statement timeout)."),
        (401, "Missing, unknown or expired token."),
        (403, "The token may not do or see this."),
        (503, "The lakehouse cannot be read right now."),
    )
}


def _get(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                **_ERRORS,
            },
        }
    }


def openapi_spec() -> dict[str, Any]:
    """The spec as a dict."""
    limit = _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Rows at most (default 20).")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clicklake API",
            "version": __version__,
            "description": "Every number of the clicklake dashboard, and SQL for analysts. "
            "Send a read token from api.tokens as 'Authorization: Bearer <token>'. "
            "Rows are limited to the token's apps; user ids, IPs and traits are masked unless the token has pii.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "SqlRequest": {
                    "type": "object",
                    "required": ["sql"],
                    "properties": {"sql": {"type": "string", "description": "One SELECT statement."}},
                },
            },
        },
        "paths": {
            "/api/v1/me": _get("The token's role: name, apps, pii, sql, admin.", []),
            "/api/v1/filters": _get(
                "Values for the filters: apps, channels, devices, dates, event names.", []
            ),
            "/api/v1/kpis": _get(
                "KPI totals (users, sessions, page views, bounce/engagement/conversion rate, revenue, "
                "average session duration) for the period and the previous one of equal length.",
                FILTERS,
            ),
            "/api/v1/timeseries": _get(
                "KPIs per day or hour.",
                [
                    *FILTERS,
                    _q("interval", {"type": "string", "enum": ["day", "hour"]}, "Bucket (default day)."),
                ],
            ),
            "/api/v1/pages": _get(
                "Top clean page paths: views, sessions (those whose first view of the page falls in the "
                "period), entrances, exits, exit rate, average engaged time.",
                [*FILTERS, limit],
            ),
            "/api/v1/breakdown": _get(
                "Sessions, users, bounce and conversion rate, revenue by a dimension.",
                [
                    *FILTERS,
                    _q("dimension", {"type": "string", "enum": sorted(DIMENSIONS)}, "The dimension.", True),
                    limit,
                ],
            ),
            "/api/v1/funnel": _get(
                "Visitors reaching each step within the window, with drop-off (app and dates filter it).",
                [
                    *FILTERS,
                    {
                        "name": "step",
                        "in": "query",
                        "required": True,
                        "schema": {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1},
                            "minItems": 1,
                            "maxItems": 10,
                        },
                        "style": "form",
                        "explode": True,
                        "description": "A step: an event name, '@regex' on the URL path, or 'Event@regex'. Repeat, in order.",
                    },
                    _q(
                        "window",
                        {"type": "number", "exclusiveMinimum": 0},
                        "Conversion window in seconds (default 3600).",
                    ),
                    _q(
                        "order", {"type": "string", "enum": ["strict", "any"]}, "Step order (default strict)."
                    ),
                    _q("breakdown", {"type": "string", "enum": sorted(FUNNEL_BREAKDOWNS)}, "Split by."),
                ],
            ),
            "/api/v1/live": _get(
                "Events committed per minute (collector time) over the last minutes, and the latest events.",
                [
                    _q("app", {"type": "string"}, "Only this app."),
                    _q("minutes", {"type": "integer", "minimum": 1, "maximum": 1440}, "Window (default 30)."),
                ],
            ),
            "/api/v1/health": _get(
                "Pipeline health: spool lag, age of each table's last commit, failed events by reason with examples.",
                FILTERS,
            ),
            "/api/v1/sql": {
                "post": {
                    "summary": "Run one read-only SELECT over the token's views (tokens with sql = true).",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/SqlRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "columns, rows (at most api.max_rows), row_count, truncated",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_ERRORS,
                    },
                }
            },
        },
    }
