"""API contract fuzz: requests generated from the served OpenAPI spec never get a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.fixtures import Served

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
TOKENS = st.sampled_from(["tok_shop", "tok_blog", "tok_admin", "tok_expired", "wrong", None])


def _value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | TEXT
    kind = schema.get("type")
    if kind == "array":
        return st.lists(_value(schema["items"]), max_size=12)
    if kind == "integer":
        return st.integers(-(10**12), 10**12).map(str) | TEXT
    if kind == "number":
        return st.floats(allow_nan=True, allow_infinity=True).map(str) | TEXT
    if schema.get("format") == "date":
        return st.dates().map(lambda d: d.isoformat()) | TEXT
    return TEXT


def _params(spec_params: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={p["name"]: _value(p["schema"]) for p in spec_params})


@pytest.fixture(scope="module")
def spec(served: Served) -> dict[str, Any]:
    with served.client() as c:
        body: dict[str, Any] = c.get("/api/v1/openapi.json").json()
    return body


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.url, r.status_code, r.text)
    body = r.json()
    if r.status_code >= 400:
        assert body["error"] and body["message"]


GET_PATHS = ["me", "filters", "kpis", "timeseries", "pages", "breakdown", "funnel", "live", "health"]


@pytest.mark.parametrize("name", GET_PATHS)
def test_get_endpoints_never_fail_on_the_server(served: Served, spec: dict[str, Any], name: str) -> None:
    op = spec["paths"][f"/api/v1/{name}"]["get"]
    client = served.client()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=_params(op["parameters"]), token=TOKENS)
    def run(params: dict[str, Any], token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        _check(client.get(f"/api/v1/{name}", params=params, headers=headers))

    with client:
        run()


def test_sql_endpoint_never_fails_on_the_server(served: Served) -> None:
    client = served.client("tok_shop")
    statements = TEXT | st.sampled_from(
        [
            "SELECT * FROM events LIMIT 3",
            "SELECT count(*) FROM sessions WHERE app_id = 'other-blog'",
            "SELECT * FROM read_blob('/etc/shadow')",
            "WITH a AS (SELECT * FROM a) SELECT * FROM a",
            "SELECT 1/0",
            "SELECT repeat('x', 1000000)",
        ]
    )
    bodies = (
        st.fixed_dictionaries({"sql": statements}) | st.dictionaries(TEXT, TEXT, max_size=3) | st.lists(TEXT)
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies)
    def run(body: Any) -> None:
        _check(client.post("/api/v1/sql", json=body))

    with client:
        run()
