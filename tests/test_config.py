"""Settings: defaults without a file, precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from clicklake.config import load_settings
from clicklake.exceptions import ConfigError

DESIGN_EXAMPLE = """
[storage]
data_dir = "./clicklake-data"
catalog_uri = ""
warehouse = ""

[collector]
host = "127.0.0.1"
port = 8080
log = "spool"
[collector.write_keys]
wk_demo = "demo-shop"

[kafka]
bootstrap_servers = "127.0.0.1:9092"
topic = "clicklake.events"

[pipeline]
commit_interval_s = 10
commit_max_events = 200000

[models]
session_gap_minutes = 30
bounce = "single_pageview"
[[models.conversions]]
name = "order"
condition = "event_name = 'Order Completed'"
value = "revenue"

[api.tokens]
tok_analyst = { apps = ["demo-shop"], pii = false, sql = true }
"""


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.storage.data_dir == Path("clicklake-data")
    assert s.storage.resolved_catalog_uri() == f"sqlite:///{tmp_path / 'clicklake-data' / 'catalog.db'}"
    assert s.pipeline.event_buckets == 16
    assert s.collector.max_event_bytes == 32 * 1024 and s.collector.max_request_bytes == 500 * 1024
    assert [c.name for c in s.models.conversions] == ["order"]


def test_the_design_example_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "clicklake.toml"
    path.write_text(DESIGN_EXAMPLE)
    s = load_settings(path, environ={})
    assert s.collector.write_keys == {"wk_demo": "demo-shop"}
    assert s.api.tokens["tok_analyst"].apps == ["demo-shop"]


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[pipeline]\ncommit_interval_s = 3\ncommit_max_events = 7\ndefault_app_id = 'file'\n")
    env = {"CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "4", "CLICKLAKE_PIPELINE__DEFAULT_APP_ID": "env"}
    s = load_settings(path, environ=env, pipeline={"commit_interval_s": 5.0, "commit_max_events": None})
    assert s.pipeline.commit_interval_s == 5.0  # flag
    assert s.pipeline.default_app_id == "env"  # env over file
    assert s.pipeline.commit_max_events == 7  # file (a None flag is no flag)


def test_env_tables_as_json() -> None:
    s = load_settings(environ={"CLICKLAKE_COLLECTOR__WRITE_KEYS": '{"k1": "app1"}'})
    assert s.collector.write_keys == {"k1": "app1"}


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(ValueError, match="frozen"):
        s.pipeline.commit_interval_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[pipeline]\ncommit_intervl_s = 3\n",
            r"pipeline\.commit_intervl_s: unknown key; allowed here: .*commit_interval_s",
        ),
        ("[pipelin]\nx = 1\n", r"pipelin: unknown key; allowed here: api, collector"),
        ("[collector]\nlog = 'disk'\n", r"collector\.log: Input should be 'spool' or 'kafka'"),
        (
            "[pipeline]\ncommit_interval_s = -1\n",
            r"pipeline\.commit_interval_s: Input should be greater than 0",
        ),
        (
            "[models]\nbounce = 'sometimes'\n",
            r"models\.bounce: Input should be 'single_pageview', 'not_engaged' or 'min_duration'",
        ),
        ("[pipeline\n", r"is not valid TOML"),
    ],
)
def test_a_wrong_key_or_value_names_it(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "clicklake.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_wrong_env_value_says_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"CLICKLAKE_\* environment[\s\S]*pipeline\.event_buckets"):
        load_settings(environ={"CLICKLAKE_PIPELINE__EVENT_BUCKETS": "lots"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
