"""The enrichment chain: built-in steps in a fixed order, user plugins, and a guarded runner.

:func:`build_chain` imports each enabled step's module (``clicklake.enrich.<name>``) lazily and
calls its ``build(settings)``; user plugins (``[[enrich.plugins]]``, ``function =
"pkg.mod:fn"``, ``after = "<step>"``) are functions ``RecordBatch -> RecordBatch`` inserted
right after the named step (after the place it would have, when that step is disabled).

:func:`run_chain` runs the steps and never lets one of them break the pipeline: a step that
raises, changes the number of rows, or drops or retypes an existing column makes the whole
batch a failure (stage ``enrich``), reported with the step's name, and the pipeline goes on.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Final

import pyarrow as pa

from clicklake.config import PluginSettings, Settings
from clicklake.enrich.base import EnrichFn, Step, forget_encodings
from clicklake.exceptions import ConfigError

log = logging.getLogger(__name__)

STEPS: Final[tuple[str, ...]] = (
    "url",
    "dedup",
    "bots",
    "useragent",
    "referrer",
    "campaign",
    "geoip",
    "user_dimension",
    "ip_anonymization",
    "pii",
)

STAGE: Final = "enrich"
ERROR_RAISED: Final = "enrich_error"
ERROR_ROW_COUNT: Final = "enrich_row_count"
ERROR_SCHEMA: Final = "enrich_schema"


@dataclass(frozen=True)
class EnrichFailure:
    """A batch that could not be enriched; every one of its rows is a failed event.

    Attributes:
        batch: The batch as it entered the chain (decoded, validated, not enriched).
        step: Name of the step that failed.
        error_type: ``enrich_error``, ``enrich_row_count`` or ``enrich_schema``.
        message: Human-readable reason, naming the step.
        stage: Always ``enrich``.
    """

    batch: pa.RecordBatch
    step: str
    error_type: str
    message: str
    stage: str = STAGE


def _load_builtin(name: str, settings: Settings) -> Step | None:
    module_name = f"clicklake.enrich.{name}"
    module = importlib.import_module(module_name)
    step = module.build(settings)
    if not isinstance(step, Step):
        raise TypeError(f"{module_name}.build() returned {type(step).__name__}, not a Step")
    return step


ENTRY_POINT_GROUP = "clicklake.enrichers"


def load_plugin(plugin: PluginSettings) -> Step:
    """Import a plugin function and wrap it as a step.

    The step is named ``plugin:<pkg.mod:fn>`` for a dotted function, ``plugin:<name>`` for an
    entry point of the :data:`ENTRY_POINT_GROUP` group (what an installed package declares in
    its ``[project.entry-points."clicklake.enrichers"]``).

    Args:
        plugin: Its settings (``function = "pkg.mod:fn"`` or ``entry_point = "name"``).

    Returns:
        The step; its columns are not declared (whatever it appends is taken as is).

    Raises:
        ConfigError: If the module cannot be imported, has no such callable, or no installed
            package declares the entry point.
    """
    if plugin.entry_point is not None:
        return Step(f"plugin:{plugin.entry_point}", _load_entry_point(plugin.entry_point))
    assert plugin.function is not None  # the settings hold exactly one of the two
    module_name, _, attr = plugin.function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"enrich plugin {plugin.function!r}: cannot import {module_name!r} ({exc}); "
            "install it or fix [[enrich.plugins]] function"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"enrich plugin {plugin.function!r}: {module_name} has no callable {attr!r}")
    return Step(f"plugin:{plugin.function}", fn)


def _load_entry_point(name: str) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise ConfigError(
            f"enrich plugin entry point {name!r}: no installed package declares it in the "
            f"{ENTRY_POINT_GROUP!r} group (installed: {', '.join(known) or 'none'}); "
            "install the package or fix [[enrich.plugins]] entry_point"
        )
    ep = next(iter(found))
    try:
        fn = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"enrich plugin entry point {name!r} ({ep.value}): cannot load it ({exc})") from exc
    if not callable(fn):
        raise ConfigError(f"enrich plugin entry point {name!r} ({ep.value}) is not callable")
    return fn  # type: ignore[no-any-return]


def build_chain(
    settings: Settings, *, loader: Callable[[str, Settings], Step | None] = _load_builtin
) -> list[Step]:
    """The enabled steps in :data:`STEPS` order, with the plugins inserted.

    Args:
        settings: The clicklake settings (``[enrich]`` section).
        loader: Builds one built-in step by name, or None to skip it (tests replace it).

    Returns:
        The steps to run, in order.

    Raises:
        ConfigError: If a plugin's ``after`` names no known step, or the plugin cannot be loaded.
    """
    plugins_after: dict[str, list[Step]] = {name: [] for name in STEPS}
    for plugin in settings.enrich.plugins:
        if plugin.after not in plugins_after:
            raise ConfigError(
                f"enrich plugin {plugin.function or plugin.entry_point!r}: after = {plugin.after!r} is not a step; "
                f"use one of {', '.join(STEPS)}"
            )
        plugins_after[plugin.after].append(load_plugin(plugin))

    chain: list[Step] = []
    for name in STEPS:
        if getattr(settings.enrich, name).enabled:
            step = loader(name, settings)
            if step is not None:
                chain.append(step)
        chain.extend(plugins_after[name])
    if settings.pipeline.promote_properties:
        # Last, so promoted values are what lands in properties (after pii hashing).
        from clicklake.enrich.promote import build as build_promote

        promote = build_promote(settings)
        if promote is not None:
            chain.append(promote)
    return chain


def _check(step: Step, before: pa.RecordBatch, after: object) -> tuple[str, str] | None:
    """``(error_type, message)`` when ``after`` is not a valid output for ``before``."""
    if not isinstance(after, pa.RecordBatch):
        return ERROR_SCHEMA, f"enrich step {step.name!r} returned {type(after).__name__}, not a RecordBatch"
    if after.num_rows != before.num_rows:
        return (
            ERROR_ROW_COUNT,
            f"enrich step {step.name!r} returned {after.num_rows} rows for {before.num_rows}",
        )
    out = after.schema
    for field in before.schema:
        i = out.get_field_index(field.name)
        if i == -1:
            return ERROR_SCHEMA, f"enrich step {step.name!r} dropped column {field.name!r}"
        if not out.field(i).type.equals(field.type):
            return (
                ERROR_SCHEMA,
                f"enrich step {step.name!r} changed column {field.name!r} "
                f"from {field.type} to {out.field(i).type}",
            )
    return None


def run_chain(steps: list[Step], batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[EnrichFailure]]:
    """Run ``steps`` in order over ``batch``.

    Args:
        steps: From :func:`build_chain`.
        batch: Decoded, validated events.

    Returns:
        ``(enriched, failures)``. When every step succeeds, the enriched batch and no failure.
        When a step fails, an empty (zero-row) slice of ``batch`` and one failure holding the
        whole input batch: none of its rows is written to ``events``.
    """
    try:
        return _run_steps(steps, batch)
    finally:
        # The steps' shared encodings are of this batch's columns: none is read again.
        forget_encodings()


def _run_steps(steps: list[Step], batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[EnrichFailure]]:
    current = batch
    for step in steps:
        fn: EnrichFn = step.fn
        try:
            result: object = fn(current)
        except Exception as exc:  # a step must never stop the pipeline; its rows become failures
            message = f"enrich step {step.name!r} raised {type(exc).__name__}: {exc}"
            log.warning(
                "event=enrich_failed step=%s error_type=%s rows=%d", step.name, ERROR_RAISED, batch.num_rows
            )
            return batch.slice(0, 0), [EnrichFailure(batch, step.name, ERROR_RAISED, message)]
        problem = _check(step, current, result)
        if problem is not None:
            error_type, message = problem
            log.warning(
                "event=enrich_failed step=%s error_type=%s rows=%d", step.name, error_type, batch.num_rows
            )
            return batch.slice(0, 0), [EnrichFailure(batch, step.name, error_type, message)]
        assert isinstance(result, pa.RecordBatch)
        current = result
    return current, []
