"""An in-memory index of ``events`` for the dashboard's funnels, kept per day partition.

A funnel over a week of 10 million events reads about 2.5 million rows; from Parquet files that
takes seconds per call. The index keeps, per data file, the few columns a funnel needs (about
50 bytes per event: hashed entity and event ids, times, dictionary-coded names, paths and
breakdown values), grouped by the file's day partition. A new snapshot reads only the files it
adds; a day whose files changed is re-assembled. A funnel call then reads only the days of its
range, picks the rows matching a step with dictionary lookups, and walks the steps with numpy.

The result is the same as :func:`clicklake.models.funnel.funnel` (same definitions: dedup by
``event_id`` keeping the earliest collector time, entity ``coalesce(anonymous_id, user_id)``
per app, bots left out unless ``models.include_bots``), with one difference: events of one
entity at the very same microsecond are ordered by a hash of their ``event_id`` instead of the
id itself, which can only change which of them supplies the breakdown value.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.exceptions import InputError
from clicklake.models.funnel import Step
from clicklake.query.engine import quote_ident, quote_literal
from clicklake.web.rollups import work_connection

_EPOCH = date(1970, 1, 1)
#: Columns kept as dictionaries (names, paths, breakdown values repeat a lot).
_CODED = ("app_id", "event_name", "url_path", "default_channel_group", "dvce_class", "geo_country")
#: NULL as a dictionary value, so that the indices have no nulls and numpy reads them in place.
_NULL = "\x00"


@dataclass
class _Rows:
    """One funnel step's rows of one day, ascending (so in (entity, time, event id) order)."""

    rows: np.ndarray
    dup: np.ndarray  # those of ``rows`` whose event id occurs more than once in the index
    ent: np.ndarray  # the entity of each row
    ts: np.ndarray  # its time
    _firsts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def firsts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first row of each entity (the rows are grouped by entity): rows, entities, times."""
        if self._firsts is None:
            at = _first_of_runs(self.ent)
            self._firsts = (self.rows[at], self.ent[at], self.ts[at])
        return self._firsts


@dataclass
class _Day:
    """One day partition's index rows, sorted by (event name, bot, entity, time, event id).

    Column ``file`` numbers each row's data file (``files``: path -> its number); ``ent`` is
    the row's entity as a dense number shared by all days of the index. Because rows are
    grouped by name, then bot or not, the non-bot rows of a funnel step that names an event are
    one contiguous slice, already in (entity, time) order: a funnel reads only its steps' rows,
    without copying or sorting them. ``dup`` flags the rows whose event id occurs more than once
    in the index.
    """

    table: pa.Table
    files: dict[str, int]
    dup: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _names: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    _paths: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # A step's rows per (step, apps seen, bots counted): the same funnel asked again, by the
    # same role, does not select them again. Emptied when ``dup`` changes.
    _steps: dict[tuple[Any, ...], _Rows] = field(default_factory=dict, repr=False)
    ts_range: tuple[int, int] = (0, 0)  # smallest and largest ``ts``

    def __post_init__(self) -> None:
        ts = self.array("ts")
        self.ts_range = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
        codes, values = _coded(self.table, "event_name")
        starts = _first_of_runs(codes)
        ends = np.r_[starts[1:], len(codes)].astype(np.int64)
        names = values.to_pylist()
        bots = self.array("is_bot")
        self._names = {}
        for s, e in zip(starts, ends, strict=True):
            # Within a name, rows that are not bots' come first.
            humans = int(s) + int(np.searchsorted(bots[s:e], 1))
            self._names[names[int(codes[s])]] = (int(s), humans, int(e))

    def array(self, name: str) -> np.ndarray:
        """A column as numpy (dictionary columns: their indices), without copying."""
        found = self._arrays.get(name)
        if found is None:
            col = self.table[name]
            arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            found = (arr.indices if pa.types.is_dictionary(arr.type) else arr).to_numpy()
            self._arrays[name] = found
        return found

    def dictionary(self, name: str) -> pa.Array:
        col = self.table[name]
        return (col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()).dictionary

    def step_rows(
        self, step: Step, apps: frozenset[str] | None, app: str | None, include_bots: bool
    ) -> _Rows:
        """The rows of ``step`` from the apps seen (``apps``: ``None`` = all; ``app``: just
        that one), bots left out unless ``include_bots``."""
        key = (step, apps, app, include_bots)
        found = self._steps.get(key)
        if found is not None:
            return found
        names = [None if v == _NULL else v for v in self.dictionary("app_id").to_pylist()]
        ok_app = np.array(
            [(apps is None or v in apps) and (app is None or v == app) for v in names], dtype=bool
        )
        if step.event is not None and step.path is None and ok_app.all():
            # One slice of the table: the rows are read in place.
            a, humans, b = self._names.get(step.event, (0, 0, 0))
            end = b if include_bots else humans
            if not include_bots or humans in (a, b):
                rows = np.arange(a, end, dtype=np.int32)
                found = _Rows(rows, rows[self.dup[a:end]], self.array("ent")[a:end], self.array("ts")[a:end])
                return self._keep(key, found)
        if step.event is not None:
            a, _, b = self._names.get(step.event, (0, 0, 0))
            cut: slice | np.ndarray = slice(a, b)
            size = b - a
        else:
            cut = self.path_rows(step.path or "")
            size = len(cut)
        mask = np.ones(size, dtype=bool)
        if step.event is not None and step.path is not None:
            mask &= _path_hits(self.dictionary("url_path"), step.path)[self.array("url_path")[cut]]
        if not include_bots:
            mask &= self.array("is_bot")[cut] == 0
        if not ok_app.all():
            mask &= ok_app[self.array("app_id")[cut]]
        hits = np.flatnonzero(mask)
        rows = (cut.start + hits if isinstance(cut, slice) else cut[hits]).astype(np.int32)
        if include_bots and isinstance(cut, slice):
            # An entity's bot and non-bot rows of a name are in two runs: order them by entity.
            ent, ts, eid = self.array("ent"), self.array("ts"), self.array("eid")
            rows = rows[np.lexsort((eid[rows], ts[rows], ent[rows]))]
        found = _Rows(rows, rows[self.dup[rows]], self.array("ent")[rows], self.array("ts")[rows])
        return self._keep(key, found)

    def _keep(self, key: tuple[Any, ...], found: _Rows) -> _Rows:
        if len(self._steps) >= _STEPS_KEPT:
            self._steps.pop(next(iter(self._steps)), None)  # the oldest
        self._steps[key] = found
        return found

    def forget_steps(self) -> None:
        """Drop the remembered step rows (their ``dup`` subsets are out of date)."""
        self._steps = {}

    def path_rows(self, pattern: str) -> np.ndarray:
        """The rows whose path matches ``pattern``, in (entity, time, event id) order."""
        if self._paths is None:
            codes = self.array("url_path")
            rows = np.argsort(codes, kind="stable").astype(np.int64)
            counts = np.bincount(codes.astype(np.int64), minlength=len(self.dictionary("url_path")))
            bounds = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=bounds[1:])
            self._paths = (rows, bounds)  # a race only computes the same lists twice
        rows, bounds = self._paths
        hit = _path_hits(self.dictionary("url_path"), pattern)
        pieces = [rows[bounds[c] : bounds[c + 1]] for c in np.flatnonzero(hit)]
        if not pieces:
            return np.zeros(0, dtype=np.int64)
        picked = np.concatenate(pieces)
        return picked[
            np.lexsort((self.array("eid")[picked], self.array("ts")[picked], self.array("ent")[picked]))
        ]


#: Step row sets remembered per day (about 12 bytes per row of the step).
_STEPS_KEPT = 8

#: Parquet bytes read per query while building: bounds the memory a build takes on the side.
_CHUNK_BYTES = 48 * 1024 * 1024


def _by_size(paths: Sequence[str]) -> list[list[str]]:
    """``paths`` in groups of about :data:`_CHUNK_BYTES` of files (at most 500 files)."""
    groups: list[list[str]] = [[]]
    size = 0
    for p in paths:
        try:
            n = Path(p).stat().st_size
        except OSError:
            n = 0
        if groups[-1] and (size + n > _CHUNK_BYTES or len(groups[-1]) >= 500):
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += n
    return [g for g in groups if g]


def _index_sql(columns: Collection[str], files: str) -> str:
    def col(name: str) -> str:
        return quote_ident(name) if name in columns else "CAST(NULL AS VARCHAR)"

    url = (
        "coalesce(page_urlpath, page_path)"
        if "page_urlpath" in columns
        else ("page_path" if "page_path" in columns else "CAST(NULL AS VARCHAR)")
    )
    bot = "CAST(coalesce(is_bot, false) AS TINYINT)" if "is_bot" in columns else "CAST(0 AS TINYINT)"
    return f"""SELECT filename, app_id, hash(coalesce(anonymous_id, user_id)) AS k,
        epoch_us(derived_tstamp) AS ts, epoch_us(collector_tstamp) AS cts, hash(event_id) AS eid,
        event_name, {url} AS url_path, {bot} AS is_bot,
        {col("default_channel_group")} AS default_channel_group, {col("dvce_class")} AS dvce_class,
        {col("geo_country")} AS geo_country
    FROM {files}"""


def _narrow_codes(table: pa.Table, width: pa.DataType | None = None) -> pa.Table:
    """Dictionary indices as small as the dictionaries allow (most have a few dozen values).

    With ``width``, that index type instead (so old and new pieces of a day concatenate).
    """
    for name in _CODED:
        col = table[name]
        size = max((len(c.dictionary) for c in col.chunks), default=0)
        index = width or (pa.int8() if size < 2**7 else pa.int16() if size < 2**15 else pa.int32())
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, col.cast(pa.dictionary(index, pa.string())))
    return table


def _code(table: pa.Table) -> pa.Table:
    for name in _CODED:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(pc.fill_null(table[name], _NULL)))
    return table


class FunnelIndex:
    """The funnel columns of ``events``, per day partition, in memory.

    Args:
        threads: DuckDB threads used to read new files.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._lock = threading.Lock()
        self._days: dict[int, _Day] = {}
        self._key: tuple[str, ...] | None = None
        # Every event id hash of the index, sorted, and those that occur more than once: a
        # funnel dedups only the rows whose id is among the (few) repeated ones.
        self._ids = np.zeros(0, dtype=np.uint64)
        self._repeated = np.zeros(0, dtype=np.uint64)
        # Entities (app, coalesce(anonymous_id, user_id)) as dense numbers: their keys sorted,
        # and each key's number.
        self._apps: dict[str, int] = {}
        self._ent_keys = np.zeros(0, dtype=np.uint64)
        self._ent_ids = np.zeros(0, dtype=np.int32)

    def sync(self, paths: Sequence[str], days: Sequence[int | None], columns: Collection[str]) -> bool:
        """Bring the index in step with one snapshot's files (``days``: each file's day partition).

        Returns:
            ``False`` when a file has no day partition (the index cannot serve this table).
        """
        key = tuple(paths)
        with self._lock:
            if self._key == key:
                return True
            if any(d is None for d in days):
                return False
            wanted: dict[int, list[str]] = {}
            for p, d in zip(paths, days, strict=True):
                wanted.setdefault(int(d), []).append(p)  # type: ignore[arg-type]  # None excluded above
            known = {p for day in self._days.values() for p in day.files}
            new = [p for p in paths if p not in known]
            parts = self._read(new, columns) if new else {}
            removed = bool(known - set(paths))
            for d in list(self._days):
                if d not in wanted:
                    del self._days[d]
            for d, files in wanted.items():
                old = self._days.get(d)
                if old is not None and set(old.files) == set(files):
                    continue
                pieces: list[pa.Table] = []
                numbers: dict[str, int] = {}
                if old is not None:
                    survivors = [p for p in files if p in old.files]
                    if survivors:
                        kept = pc.is_in(
                            old.table["file"], value_set=pa.array([old.files[p] for p in survivors])
                        )
                        pieces.append(_narrow_codes(old.table.filter(kept), pa.int32()))
                        numbers.update({p: old.files[p] for p in survivors})
                next_no = max(numbers.values(), default=-1) + 1
                for p in files:
                    if p not in numbers:
                        numbers[p] = next_no
                        part = parts[p]
                        part = part.append_column("ent", pa.array(self._entities(part)))
                        pieces.append(
                            part.drop_columns(["k"]).append_column(
                                "file", pa.array(np.full(part.num_rows, next_no, np.int16))
                            )
                        )
                        next_no += 1
                table = _narrow_codes(pa.concat_tables(pieces).unify_dictionaries().combine_chunks())
                # By name, bot or not, entity, time and event id: a step's rows are one slice, in order.
                order = np.lexsort(
                    (
                        _column(table, "eid"),
                        _column(table, "ts"),
                        _column(table, "ent"),
                        _column(table, "is_bot"),
                        _coded(table, "event_name")[0],
                    )
                )
                table = table.take(order)
                self._days[d] = _Day(table, numbers)
            before = self._repeated
            self._track_ids(parts, rebuild=removed)
            # Without removed files, ids only gain copies: the days held already need only the
            # newly repeated ids looked up (usually a handful), not the whole set again.
            added = None if removed else np.setdiff1d(self._repeated, before, assume_unique=True)
            for day in self._days.values():
                if added is None or len(day.dup) != day.table.num_rows:
                    day.dup = np.isin(day.array("eid"), self._repeated)
                elif len(added) and (hits := np.isin(day.array("eid"), added)).any():
                    day.dup = day.dup | hits
                else:
                    continue
                day.forget_steps()
            self._key = key
            return True

    def _entities(self, part: pa.Table) -> np.ndarray:
        """The entity number of each row of ``part`` (new entities get new numbers)."""
        if part.num_rows == 0:
            return np.zeros(0, dtype=np.int32)
        app_idx, app_values = _coded(part, "app_id")
        codes = np.array(
            [self._apps.setdefault(v, len(self._apps)) for v in app_values.to_pylist()], dtype=np.uint64
        )
        keys = _column(part, "k") + codes[app_idx] * np.uint64(0x9E3779B97F4A7C15)
        uniq, inverse = np.unique(keys, return_inverse=True)
        at = np.searchsorted(self._ent_keys, uniq)
        known = at < len(self._ent_keys)
        known[known] = self._ent_keys[at[known]] == uniq[known]
        ids = np.empty(len(uniq), dtype=np.int32)
        ids[known] = self._ent_ids[at[known]]
        fresh = np.flatnonzero(~known)
        ids[fresh] = np.arange(len(self._ent_ids), len(self._ent_ids) + len(fresh), dtype=np.int32)
        merged = np.concatenate([self._ent_keys, uniq[fresh]])
        order = np.argsort(merged, kind="stable")
        self._ent_keys = merged[order]
        self._ent_ids = np.concatenate([self._ent_ids, ids[fresh]])[order]
        entities: np.ndarray = ids[inverse.reshape(-1)]
        return entities

    def _track_ids(self, parts: dict[str, pa.Table], rebuild: bool) -> None:
        if rebuild:
            chunks = [_column(day.table, "eid") for day in self._days.values()]
            ids = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.uint64)
        else:
            new = [_column(t, "eid") for t in parts.values() if t.num_rows]
            if not new:
                return
            # Two sorted runs: the stable sort merges them in linear time.
            ids = np.concatenate([self._ids, np.sort(np.concatenate(new))])
            ids = ids[np.argsort(ids, kind="stable")]
        same = ids[1:] == ids[:-1]
        self._ids = ids
        self._repeated = np.unique(ids[1:][same])

    def repeated_ids(self) -> np.ndarray:
        """Event id hashes that occur more than once in the index."""
        with self._lock:
            return self._repeated

    def _read(self, paths: Sequence[str], columns: Collection[str]) -> dict[str, pa.Table]:
        con = work_connection(self.threads)
        out: dict[str, pa.Table] = {}
        try:
            for chunk in _by_size(paths):
                files = "[" + ", ".join(quote_literal(p) for p in chunk) + "]"
                table = con.sql(
                    _index_sql(columns, f"read_parquet({files}, filename=true, union_by_name=true)")
                ).to_arrow_table()
                order = pc.sort_indices(table["filename"])
                table = table.take(order)
                names = table["filename"].to_numpy(zero_copy_only=False)
                table = _code(table.drop_columns(["filename"]))
                bounds = (
                    np.flatnonzero(names[1:] != names[:-1]) + 1
                    if len(names)
                    else np.array([], dtype=np.int64)
                )
                starts = [0, *bounds.tolist()]
                ends = [*bounds.tolist(), len(names)]
                for s, e in zip(starts, ends, strict=True):
                    if e > s:
                        out[str(names[s])] = table.slice(s, e - s)
                for p in chunk:
                    out.setdefault(p, table.slice(0, 0))
        finally:
            con.close()
        return out

    def rows(self, first: date, last: date) -> list[_Day]:
        """The index days ``first..last``, in order."""
        lo, hi = (first - _EPOCH).days, (last - _EPOCH).days
        with self._lock:
            return [d for k, d in sorted(self._days.items()) if lo <= k <= hi and d.table.num_rows]

    def funnel(
        self,
        first: date,
        last: date,
        steps: Sequence[Step],
        window_s: float,
        order: str,
        breakdown: str | None,
        apps: Collection[str] | None,
        app: str | None,
        include_bots: bool,
    ) -> list[dict[str, Any]]:
        """:func:`run_funnel` over the days ``first..last`` (each whole day, UTC)."""
        days = self.rows(first, last)
        with self._lock:
            entities = len(self._ent_ids)  # only grows: covers the days read above
        start = datetime.combine(first, datetime.min.time(), UTC)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
        return run_funnel(
            days, entities, steps, window_s, order, breakdown, start, end, apps, app, include_bots
        )


def _per_value(dictionary: pa.Array, test: Any, null_value: bool) -> np.ndarray:
    """``test`` over a dictionary's values (the NULL stand-in gets ``null_value``)."""
    hits = np.asarray(pc.fill_null(test(dictionary), False).to_numpy(zero_copy_only=False), dtype=bool)
    hits[np.asarray(pc.equal(dictionary, _NULL).to_numpy(zero_copy_only=False), dtype=bool)] = null_value
    return hits


def _coded(table: pa.Table, name: str) -> tuple[np.ndarray, pa.Array]:
    arr = table[name].chunk(0) if table[name].num_chunks == 1 else table[name].combine_chunks()
    return arr.indices.to_numpy(), arr.dictionary


def _path_hits(values: pa.Array, pattern: str) -> np.ndarray:
    """Per path dictionary value, whether ``pattern`` matches it.

    RE2 search semantics, as DuckDB's ``regexp_matches``; a NULL path is matched as ''.
    """
    empty = bool(pc.match_substring_regex(pa.array([""]), pattern)[0].as_py())
    return _per_value(values, lambda v: pc.match_substring_regex(v, pattern), empty)


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table[name]
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    values: np.ndarray = arr.to_numpy()
    return values


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    """Positions where a run of equal ``keys`` starts (``keys`` grouped)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def run_funnel(
    days: Sequence[_Day],
    entities: int,
    steps: Sequence[Step],
    window_s: float,
    order: str,
    breakdown: str | None,
    start: datetime,
    end: datetime,
    apps: Collection[str] | None,
    app: str | None,
    include_bots: bool,
) -> list[dict[str, Any]]:
    """Entities reaching each step over the index ``days`` (see :func:`clicklake.models.funnel.funnel`).

    ``days``: the index days of the range in order, as :meth:`FunnelIndex.rows` gives;
    ``entities``: how many entity numbers the index has given out.

    Returns:
        One dict per (breakdown value, step): ``[breakdown,] step, step_name, entities,
        conversion_from_start, conversion_from_previous, drop_off, drop_off_rate``.
    """
    if not steps or len(steps) > 16:
        raise InputError("a funnel has 1 to 16 steps")
    for s in steps:
        if s.event is None and s.path is None:
            raise InputError("a funnel step needs an event name, a path, or both")
    lo = int((start - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    hi = int((end - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    n = len(steps)
    allowed = None if apps is None else set(apps)
    bd_values: list[Any] = [None]
    bd_global: dict[Any, int] = {None: 0}

    # Per day and step: the rows matching the step that pass the bot and app filters, in
    # (entity, time, event id) order. A step naming an event reads only that name's slice.
    scope = None if allowed is None else frozenset(allowed)
    picked = [[day.step_rows(st, scope, app, include_bots) for st in steps] for day in days]

    # Dedup: of the copies of an event id among these rows, the one collected first (then
    # derived first) counts. Only rows whose id occurs more than once in the index are looked at.
    losers: list[np.ndarray | None] = [None] * len(days)
    flagged: list[tuple[int, np.ndarray]] = []
    for di, per_step in enumerate(picked):
        found = [r.dup for r in per_step if len(r.dup)]
        if found:
            flagged.append((di, np.unique(np.concatenate(found))))
    if flagged:
        d_day = np.concatenate([np.full(len(r), di, dtype=np.int64) for di, r in flagged])
        d_row = np.concatenate([r for _, r in flagged])
        eid, cts, ts = (
            np.concatenate([days[di].array(name)[r] for di, r in flagged]) for name in ("eid", "cts", "ts")
        )
        o = np.lexsort((ts, cts, eid))
        later = o[1:][eid[o][1:] == eid[o][:-1]]
        for di in np.unique(d_day[later]):
            losers[int(di)] = d_row[later][d_day[later] == di]
    for di, (day, per_step) in enumerate(zip(days, picked, strict=True)):
        inside = day.ts_range[0] >= lo and day.ts_range[1] < hi  # the whole day is in the range
        gone = losers[di]
        if inside and gone is None:
            continue
        for i, r in enumerate(per_step):
            keep = np.ones(len(r.rows), dtype=bool) if inside else (r.ts >= lo) & (r.ts < hi)
            if gone is not None:
                keep &= ~np.isin(r.rows, gone)
            per_step[i] = _Rows(r.rows[keep], r.dup[:0], r.ent[keep], r.ts[keep])

    def anchor_values(day: _Day, rows: np.ndarray) -> np.ndarray:
        if not breakdown:
            return np.zeros(len(rows), dtype=np.int64)
        remap = []
        for v in day.dictionary(breakdown).to_pylist():
            key = None if v == _NULL else v
            if key not in bd_global:
                bd_global[key] = len(bd_values)
                bd_values.append(key)
            remap.append(bd_global[key])
        values: np.ndarray = np.asarray(remap, dtype=np.int64)[day.array(breakdown)[rows]]
        return values

    w_us = round(window_s * 1_000_000)
    never = np.iinfo(np.int64).max
    anchor = np.zeros(entities if breakdown else 0, dtype=np.int64)
    reached: list[np.ndarray] = []
    if order == "strict":
        # Step by step: an entity's first row of step i after its step i-1 and within the window
        # of its first step 1. Days come in time order, so the first day that has one wins.
        t1 = prev = np.zeros(0, dtype=np.int64)
        for i in range(n):
            first = np.full(entities, never, dtype=np.int64)
            for day, per_step in zip(days, picked, strict=True):
                step = per_step[i]
                if len(step.rows) == 0:
                    continue
                if i == 0:
                    rows, e, t = step.firsts()
                else:
                    rows, e, t = step.rows, step.ent, step.ts
                    ok = (t > prev[e]) & (t - t1[e] <= w_us)
                    rows, e, t = rows[ok], e[ok], t[ok]
                    at = _first_of_runs(e)
                    rows, e, t = rows[at], e[at], t[at]
                new = first[e] == never
                first[e[new]] = t[new]
                if i == 0 and breakdown:
                    anchor[e[new]] = anchor_values(day, rows[new])
            if i == 0:
                t1 = first
            prev = first
            reached.append(first != never)
    else:
        # Any order: from each entity's first row of any step (by time, then event id), which
        # steps it has within the window.
        t0 = np.full(entities, never, dtype=np.int64)
        id0 = np.zeros(entities, dtype=np.uint64)
        for i in range(n):
            if any(steps[j] == steps[i] for j in range(i)):
                continue
            for day, per_step in zip(days, picked, strict=True):
                rows, e, t = per_step[i].firsts()
                if len(rows) == 0:
                    continue
                ids = day.array("eid")[rows]
                better = (t < t0[e]) | ((t == t0[e]) & (ids < id0[e]))
                e, rows = e[better], rows[better]
                t0[e], id0[e] = t[better], ids[better]
                if breakdown:
                    anchor[e] = anchor_values(day, rows)
        for i in range(n):
            hit = np.zeros(entities, dtype=bool)
            for per_step in picked:
                e, t = per_step[i].ent, per_step[i].ts
                inside = (t >= t0[e]) & (t - t0[e] <= w_us)
                hit[e[inside]] = True
            reached.append(hit if i == 0 else reached[i - 1] & hit)
    if breakdown:
        counts = np.stack([np.bincount(anchor[r], minlength=len(bd_values)) for r in reached])
    else:
        counts = np.array([[np.count_nonzero(r)] for r in reached], dtype=np.int64)
    if counts[0].sum() == 0:
        return []
    names = [s.name() for s in steps]
    present = [c for c in range(len(bd_values)) if counts[0, c] > 0]
    present.sort(key=lambda c: (bd_values[c] is not None, bd_values[c] if bd_values[c] is not None else ""))
    out: list[dict[str, Any]] = []
    for c in present:
        for i in range(n):
            entities_i, first_n = int(counts[i, c]), int(counts[0, c])
            prev_n = int(counts[i - 1, c]) if i else entities_i
            row: dict[str, Any] = {}
            if breakdown:
                row[breakdown] = bd_values[c]
            row.update(
                {
                    "step": i + 1,
                    "step_name": names[i],
                    "entities": entities_i,
                    "conversion_from_start": entities_i / first_n if first_n else None,
                    "conversion_from_previous": entities_i / prev_n if prev_n else None,
                    "drop_off": prev_n - entities_i,
                    "drop_off_rate": 1.0 - entities_i / prev_n if prev_n else None,
                }
            )
            out.append(row)
    return out
