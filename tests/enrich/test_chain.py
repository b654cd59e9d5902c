"""The chain: order, plugins, and failing steps turned into failures."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clicklake.config import Settings, load_settings
from clicklake.enrich.base import Step
from clicklake.enrich.chain import STEPS, build_chain, run_chain
from clicklake.events.schema import EVENTS_ARROW
from clicklake.exceptions import ConfigError
from tests.enrich.batches import CHROME_WINDOWS, make_batch

ALL_ON = {"user_dimension": {"enabled": True}, "pii": {"enabled": True}}


def _fake_loader(name: str, settings: Settings) -> Step:
    """Stand-in for every built-in step: appends a column named after it."""
    return Step(name, lambda b: b.append_column(f"ran_{name}", pa.array([True] * b.num_rows)))


def shout_title(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A plugin: the page title in capitals, as a new column."""
    return batch.append_column("title_upper", pc.utf8_upper(batch.column("page_title")))


def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
    raise RuntimeError("boom")


def lose_a_row(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.slice(1)


def drop_context(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.drop_columns(["context"])


def retype_offset(batch: pa.RecordBatch) -> pa.RecordBatch:
    i = batch.schema.get_field_index("source_offset")
    return batch.set_column(i, "source_offset", batch.column(i).cast(pa.int32()))


def _plugin(fn: str, after: str) -> dict[str, str]:
    return {"function": f"{__name__}:{fn}", "after": after}


def test_builtin_steps_run_in_fixed_order() -> None:
    s = load_settings(environ={}, enrich=ALL_ON)
    assert [step.name for step in build_chain(s, loader=_fake_loader)] == list(STEPS)


def test_disabled_steps_are_left_out() -> None:
    s = load_settings(environ={}, enrich={"bots": {"enabled": False}, "useragent": {"enabled": False}})
    names = [step.name for step in build_chain(s, loader=_fake_loader)]
    assert names == ["url", "dedup", "referrer", "campaign", "geoip", "ip_anonymization"]


def test_real_steps_of_this_module_are_built(settings: Settings) -> None:
    names = [step.name for step in build_chain(settings)]
    assert names[:1] == ["url"]
    assert [n for n in names if n in {"bots", "useragent", "referrer", "campaign"}] == [
        "bots",
        "useragent",
        "referrer",
        "campaign",
    ]


def test_plugin_runs_after_its_step() -> None:
    s = load_settings(
        environ={},
        enrich={**ALL_ON, "plugins": [_plugin("shout_title", "referrer"), _plugin("explode", "pii")]},
    )
    names = [step.name for step in build_chain(s, loader=_fake_loader)]
    i = names.index("referrer")
    assert names[i + 1] == f"plugin:{__name__}:shout_title"
    assert names[-1] == f"plugin:{__name__}:explode"


def test_plugin_after_a_disabled_step_keeps_its_place() -> None:
    s = load_settings(
        environ={}, enrich={"bots": {"enabled": False}, "plugins": [_plugin("shout_title", "bots")]}
    )
    names = [step.name for step in build_chain(s, loader=_fake_loader)]
    assert names[:3] == ["url", "dedup", f"plugin:{__name__}:shout_title"]


def test_plugin_output_is_kept() -> None:
    s = load_settings(environ={}, enrich={"plugins": [_plugin("shout_title", "url")]})
    steps = build_chain(s, loader=_fake_loader)
    out, failures = run_chain(steps, make_batch([{"page_title": "Home"}, {"page_title": None}]))
    assert failures == []
    assert out.column("title_upper").to_pylist() == ["HOME", None]
    # user_dimension and pii are off by default; the plugin's column comes right after url's.
    assert out.schema.names[len(EVENTS_ARROW) :] == [
        "ran_url",
        "title_upper",
        "ran_dedup",
        "ran_bots",
        "ran_useragent",
        "ran_referrer",
        "ran_campaign",
        "ran_geoip",
        "ran_ip_anonymization",
    ]


@pytest.mark.parametrize(
    ("fn", "error_type", "words"),
    [
        ("explode", "enrich_error", "raised RuntimeError: boom"),
        ("lose_a_row", "enrich_row_count", "returned 1 rows for 2"),
        ("drop_context", "enrich_schema", "dropped column 'context'"),
        ("retype_offset", "enrich_schema", "changed column 'source_offset'"),
    ],
)
def test_failing_plugin_fails_the_whole_batch(fn: str, error_type: str, words: str) -> None:
    s = load_settings(environ={}, enrich={"plugins": [_plugin(fn, "campaign")]})
    steps = build_chain(s, loader=_fake_loader)
    batch = make_batch([{"event_id": "a", "user_agent": CHROME_WINDOWS}, {"event_id": "b"}])
    out, failures = run_chain(steps, batch)
    assert out.num_rows == 0
    (failure,) = failures
    assert failure.batch.equals(batch)  # the rows as they entered the chain, nothing lost
    assert (failure.stage, failure.error_type, failure.step) == (
        "enrich",
        error_type,
        f"plugin:{__name__}:{fn}",
    )
    assert words in failure.message
    assert f"{__name__}:{fn}" in failure.message


def test_bad_plugin_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a step"):
        build_chain(
            load_settings(environ={}, enrich={"plugins": [_plugin("explode", "nope")]}), loader=_fake_loader
        )
    with pytest.raises(ConfigError, match="no callable"):
        build_chain(
            load_settings(environ={}, enrich={"plugins": [_plugin("missing", "url")]}), loader=_fake_loader
        )
    with pytest.raises(ConfigError, match="cannot import"):
        s = load_settings(
            environ={}, enrich={"plugins": [{"function": "no_such_pkg.mod:fn", "after": "url"}]}
        )
        build_chain(s, loader=_fake_loader)


def _install_plugin_package(root: Path, entry_point: str, target: str) -> None:
    """Install a tiny distribution the way pip lays it out: a module and a .dist-info whose
    entry_points.txt declares ``entry_point`` in clicklake's group."""
    (root / "acme_enrich.py").write_text(
        "import pyarrow.compute as pc\n\n"
        "def tag(batch):\n"
        "    return batch.append_column('acme_tag', pc.utf8_upper(batch.column('event_type')))\n"
    )
    dist = root / "acme_enrich-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-enrich\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[clicklake.enrichers]\n{entry_point} = {target}\n")


def test_plugin_from_an_installed_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin_package(tmp_path, "acme-tag", "acme_enrich:tag")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = load_settings(
        environ={}, enrich={**ALL_ON, "plugins": [{"entry_point": "acme-tag", "after": "campaign"}]}
    )
    chain = build_chain(s, loader=_fake_loader)
    names = [step.name for step in chain]
    assert names[names.index("campaign") + 1] == "plugin:acme-tag"
    out, failures = run_chain(
        [chain[names.index("plugin:acme-tag")]], make_batch([{"event_type": "track"}, {"event_type": "page"}])
    )
    assert not failures
    assert out.column("acme_tag").to_pylist() == ["TRACK", "PAGE"]


def test_unknown_or_broken_entry_point_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin_package(tmp_path, "acme-broken", "acme_enrich:no_such_function")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = load_settings(environ={}, enrich={"plugins": [{"entry_point": "nope"}]})
    with pytest.raises(ConfigError, match=r"no installed package declares it.*acme-broken"):
        build_chain(s, loader=_fake_loader)
    s = load_settings(environ={}, enrich={"plugins": [{"entry_point": "acme-broken"}]})
    with pytest.raises(ConfigError, match="cannot load it"):
        build_chain(s, loader=_fake_loader)


def test_plugin_needs_exactly_one_of_function_and_entry_point() -> None:
    with pytest.raises(ConfigError, match="exactly one of function"):
        load_settings(environ={}, enrich={"plugins": [{"after": "pii"}]})
    with pytest.raises(ConfigError, match="exactly one of function"):
        load_settings(
            environ={}, enrich={"plugins": [{"function": f"{__name__}:explode", "entry_point": "x"}]}
        )
