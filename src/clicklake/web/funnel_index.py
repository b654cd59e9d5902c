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

import itertools
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
_GENERATIONS = itertools.count()


@dataclass(frozen=True)
class FunnelQuery:
    """What a funnel asks, apart from its date range (see :func:`clicklake.models.funnel.funnel`).

    Attributes:
        steps: the ordered steps (1 to 16).
        window_s: the conversion window in seconds, from the anchor row.
        order: ``strict`` (each step after the previous one) or ``any``.
        breakdown: the index column to break the counts down by, or ``None``.
        apps: the apps a role may see (``None``: all).
        app: the one app asked for (``None``: every app the role sees).
        include_bots: whether bot events count.
    """

    steps: tuple[Step, ...]
    window_s: float
    order: str
    breakdown: str | None
    apps: frozenset[str] | None
    app: str | None
    include_bots: bool

    @classmethod
    def of(
        cls,
        steps: Sequence[Step],
        window_s: float,
        order: str,
        breakdown: str | None = None,
        apps: Collection[str] | None = None,
        app: str | None = None,
        include_bots: bool = False,
    ) -> FunnelQuery:
        """The query, with ``steps`` as a tuple and ``apps`` as a frozenset (both hashable)."""
        return cls(
            tuple(steps),
            window_s,
            order,
            breakdown,
            None if apps is None else frozenset(apps),
            app,
            include_bots,
        )

    @property
    def w_us(self) -> int:
        """The window in microseconds."""
        return round(self.window_s * 1_000_000)

    @property
    def strict(self) -> bool:
        """Whether each step must come after the previous one."""
        return self.order == "strict"


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
    number: int = 0  # the day partition, as days since 1970-01-01
    dup: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # Tells this assembly of the day from any other (a piece remembers those of the days it read).
    generation: int = field(default_factory=lambda: next(_GENERATIONS))
    _names: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    _paths: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # A step's rows per (step, apps seen, bots counted): the same funnel asked again, by the
    # same role, does not select them again. Emptied when ``dup`` changes.
    _steps: dict[tuple[Any, ...], _Rows] = field(default_factory=dict, repr=False)
    # A funnel's entities anchored on this day, per funnel (see :class:`_Piece`).
    _pieces: dict[FunnelQuery, _Piece] = field(default_factory=dict, repr=False)
    _values: dict[str, list[Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
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

    def values(self, name: str) -> list[Any]:
        """A dictionary column's values as Python (NULL as ``None``), in code order."""
        found = self._values.get(name)
        if found is None:
            found = [None if v == _NULL else v for v in self.dictionary(name).to_pylist()]
            self._values[name] = found
        return found

    @property
    def aligned(self) -> bool:
        """Whether every row's time falls on the day of its partition."""
        lo = self.number * _DAY_US
        return self.table.num_rows == 0 or (self.ts_range[0] >= lo and self.ts_range[1] < lo + _DAY_US)

    def piece(self, key: FunnelQuery, later: tuple[int, ...]) -> _Piece | None:
        """The piece remembered for funnel ``key``, if it read the following days ``later`` (generations)."""
        found = self._pieces.get(key)
        return found if found is not None and found.later == later else None

    def keep_piece(self, key: FunnelQuery, piece: _Piece) -> None:
        """Remember ``piece`` for funnel ``key`` (the oldest of :data:`_PIECES_KEPT` goes)."""
        with self._lock:
            self._pieces.pop(key, None)
            if len(self._pieces) >= _PIECES_KEPT:
                self._pieces.pop(next(iter(self._pieces)))
            self._pieces[key] = piece

    def step_rows(
        self, step: Step, apps: frozenset[str] | None, app: str | None, include_bots: bool
    ) -> _Rows:
        """The rows of ``step`` from the apps seen (``apps``: ``None`` = all; ``app``: just
        that one), bots left out unless ``include_bots``."""
        key = (step, apps, app, include_bots)
        found = self._steps.get(key)
        if found is not None:
            return found
        names = self.values("app_id")
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
        with self._lock:
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
#: Funnel pieces remembered per day (about 6 bytes per entity anchored on the day).
_PIECES_KEPT = 8
#: Funnels whose window reaches further than this many days past the anchor's day walk the
#: days per call instead of reading pieces (a piece keeps a depth per day it reaches).
_MAX_HORIZON = 7
_DAY_US = 86_400_000_000
#: A step not reached (a day offset past any horizon).
_FAR = np.int8(127)
_NEVER = np.iinfo(np.int64).max

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
                self._days[d] = _Day(table, numbers, d)
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

    def funnel(self, first: date, last: date, query: FunnelQuery) -> list[dict[str, Any]]:
        """:func:`run_funnel` over the days ``first..last`` (each whole day, UTC).

        When every day it reads holds only times of its own day and the window reaches at most
        :data:`_MAX_HORIZON` days past the anchor's, the answer is summed from per-day pieces
        (:func:`funnel_by_pieces`), which a later call with another range reads again.
        """
        _check_steps(query.steps)
        lo, hi = (first - _EPOCH).days, (last - _EPOCH).days
        with self._lock:
            held = dict(self._days)
            entities = len(self._ent_ids)  # only grows: covers the days held
        days = [held[k] for k in sorted(held) if lo <= k <= hi and held[k].table.num_rows]
        horizon = _horizon(query.window_s)
        if horizon <= _MAX_HORIZON and all(day.aligned for k, day in held.items() if lo <= k <= hi + horizon):
            return funnel_by_pieces(days, held, entities, query, lo, hi)
        start = datetime.combine(first, datetime.min.time(), UTC)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
        return run_funnel(days, entities, query, start, end)


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


def _check_steps(steps: Sequence[Step]) -> None:
    if not steps or len(steps) > 16:
        raise InputError("a funnel has 1 to 16 steps")
    for s in steps:
        if s.event is None and s.path is None:
            raise InputError("a funnel step needs an event name, a path, or both")


def _horizon(window_s: float) -> int:
    """How many days past its anchor's day a funnel's later steps can fall."""
    return (_DAY_US - 1 + round(window_s * 1_000_000)) // _DAY_US


class _Labels:
    """Breakdown values numbered across the days of one call (0 is NULL, or no breakdown)."""

    def __init__(self, column: str | None):
        self.column = column
        self.values: list[Any] = [None]
        self._numbers: dict[Any, int] = {None: 0}

    def numbers(self, day: _Day) -> np.ndarray:
        """Per code of ``day``'s dictionary of the column, its number here."""
        if self.column is None:
            return np.zeros(1, dtype=np.int64)
        out = []
        for v in day.values(self.column):
            found = self._numbers.get(v)
            if found is None:
                found = self._numbers[v] = len(self.values)
                self.values.append(v)
            out.append(found)
        return np.asarray(out, dtype=np.int64)

    def of(self, day: _Day, rows: np.ndarray) -> np.ndarray:
        """The numbers of the values of ``rows`` of ``day``."""
        if self.column is None:
            return np.zeros(len(rows), dtype=np.int64)
        numbered: np.ndarray = self.numbers(day)[day.array(self.column)[rows]]
        return numbered


def _picked(days: Sequence[_Day], query: FunnelQuery) -> list[list[_Rows]]:
    # Per day and step: the rows matching the step that pass the bot and app filters, in
    # (entity, time, event id) order. A step naming an event reads only that name's slice.
    return [
        [day.step_rows(st, query.apps, query.app, query.include_bots) for st in query.steps] for day in days
    ]


def run_funnel(
    days: Sequence[_Day], entities: int, query: FunnelQuery, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Entities reaching each step over the index ``days`` (see :func:`clicklake.models.funnel.funnel`).

    ``days``: the index days of the range in order, as :meth:`FunnelIndex.rows` gives;
    ``entities``: how many entity numbers the index has given out.

    Returns:
        One dict per (breakdown value, step): ``[breakdown,] step, step_name, entities,
        conversion_from_start, conversion_from_previous, drop_off, drop_off_rate``.
    """
    _check_steps(query.steps)
    lo = int((start - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    hi = int((end - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    labels = _Labels(query.breakdown)
    picked = _picked(days, query)
    counts = _walk(days, picked, entities, query, labels, lo, hi)
    return _answer(counts, labels, query.steps)


def funnel_by_pieces(
    days: Sequence[_Day], held: dict[int, _Day], entities: int, query: FunnelQuery, first: int, last: int
) -> list[dict[str, Any]]:
    """:func:`run_funnel` over ``days`` (day numbers ``first..last``), summed from per-day pieces.

    A day's :class:`_Piece` holds the entities whose anchor (strict: first step-1 row; any:
    first row of any step) is on that day, with the steps each reaches within the window using
    the rows of that day and of each number of following days. It does not depend on the
    range, so it is built once per funnel and read by every range that holds the day: an entity
    is counted on the first day of the range where it is anchored, with the depth that stops at
    the range's last day. Every day read must hold only times of its own day (the caller checks).

    Copies of an event (ids repeated in the index) are the one thing a piece cannot know about,
    since which copy counts depends on the range: the entities with such a row among the
    steps' rows of the range are left out of the pieces' sums and walked exactly, on their rows
    only.

    Args:
        held: every day of the index by number (the pieces read the days after their own).
        first: the number of the range's first day (days since 1970-01-01).
        last: the number of its last day.

    Returns:
        As :func:`run_funnel`.
    """
    horizon = _horizon(query.window_s)
    breakdown = query.breakdown
    labels = _Labels(breakdown)
    n = len(query.steps)
    picked = _picked(days, query)
    marked = [day.array("ent")[r.dup] for day, per_step in zip(days, picked, strict=True) for r in per_step]
    dirty = np.unique(np.concatenate(marked)) if marked else np.zeros(0, dtype=np.int32)
    seen = np.zeros(entities, dtype=bool)
    seen[dirty] = True  # walked exactly below
    cells: list[np.ndarray] = []
    for day in days:
        after = [held.get(day.number + k) for k in range(1, horizon + 1)]
        later = tuple(-1 if d is None else d.generation for d in after)
        piece = day.piece(query, later)
        if piece is None:
            piece = _build_piece(day, after, later, entities, query)
            day.keep_piece(query, piece)
        fresh = ~seen[piece.ent]
        seen[piece.ent] = True
        depth = piece.depth[min(last - day.number, horizon)][fresh].astype(np.int64)
        if breakdown:
            depth += labels.numbers(day)[piece.value[fresh]] * (n + 1)
        cells.append(depth)
    per_cell = np.bincount(np.concatenate(cells), minlength=len(labels.values) * (n + 1)) if cells else None
    counts = np.zeros((n, len(labels.values)), dtype=np.int64)
    if per_cell is not None:
        # Entities of depth d reach steps 1..d: step i counts those of depth > i.
        at_least = np.cumsum(per_cell.reshape(-1, n + 1)[:, ::-1], axis=1)[:, ::-1]
        counts += at_least[:, 1:].T
    if len(dirty):
        # The rows of those entities only (rows are in entity order), entities renumbered 0..k-1.
        theirs: list[list[_Rows]] = []
        for per_step in picked:
            theirs.append([])
            for r in per_step:
                a = np.searchsorted(r.ent, dirty)
                size = np.searchsorted(r.ent, dirty, side="right") - a
                at = np.repeat(a - (np.cumsum(size) - size), size) + np.arange(int(size.sum()))
                ent = np.searchsorted(dirty, r.ent[at]).astype(np.int32)
                theirs[-1].append(_Rows(r.rows[at], r.dup, ent, r.ts[at]))
        lo, hi = first * _DAY_US, (last + 1) * _DAY_US
        exact = _walk(days, theirs, len(dirty), query, labels, lo, hi)
        grown = np.zeros((n, len(labels.values)), dtype=np.int64)
        grown[:, : counts.shape[1]] = counts
        counts = grown + exact
    return _answer(counts, labels, query.steps)


@dataclass(frozen=True)
class _Piece:
    """One funnel's entities anchored on one day (see :func:`funnel_by_pieces`).

    Attributes:
        ent: the entities anchored on the day, ascending.
        depth: ``depth[h]``: how many steps each reaches with the rows of its day and the ``h``
            days after it (int8, one row per ``h`` up to the horizon).
        value: the breakdown value of each anchor row (a code of the day's dictionary).
        later: the generations of the days after this one that were read (-1: none held).
    """

    ent: np.ndarray
    depth: np.ndarray
    value: np.ndarray
    later: tuple[int, ...]


def _build_piece(
    day: _Day, after: Sequence[_Day | None], later: tuple[int, ...], entities: int, query: FunnelQuery
) -> _Piece:
    steps, w_us, strict, breakdown = query.steps, query.w_us, query.strict, query.breakdown
    n = len(steps)
    reach = [(k, d) for k, d in enumerate([day, *after]) if d is not None]

    def rows_of(d: _Day, i: int) -> _Rows:
        return d.step_rows(steps[i], query.apps, query.app, query.include_bots)

    if strict:
        anchor_rows, ent, t1 = rows_of(day, 0).firsts()
    else:
        firsts = [rows_of(day, i).firsts() for i in range(n) if steps[i] not in steps[:i]]
        ent = np.unique(np.concatenate([f[1] for f in firsts]))
    m = len(ent)
    # Entity number -> its place in ``ent`` (-1: not anchored here).
    slot = np.full(entities, -1, dtype=np.int32)
    slot[ent] = np.arange(m, dtype=np.int32)
    off = np.full((n, m), _FAR, dtype=np.int8)  # per step, the day offset of the row reaching it

    def mine(r: _Rows) -> tuple[np.ndarray, np.ndarray]:
        s = slot[r.ent]
        keep = s >= 0
        return s[keep], r.ts[keep]

    if strict:
        off[0] = 0
        prev = t1
        for i in range(1, n):
            found = np.full(m, _NEVER, dtype=np.int64)
            for k, d in reach:
                s, t = mine(rows_of(d, i))
                ok = (t > prev[s]) & (t - t1[s] <= w_us)
                s, t = s[ok], t[ok]
                at = _first_of_runs(s)
                s, t = s[at], t[at]
                new = found[s] == _NEVER
                found[s[new]] = t[new]
                off[i, s[new]] = k
            prev = found
    else:
        t0 = np.full(m, _NEVER, dtype=np.int64)
        id0 = np.zeros(m, dtype=np.uint64)
        anchor_rows = np.zeros(m, dtype=np.int64)
        for rows, e, t in firsts:
            s = slot[e]
            ids = day.array("eid")[rows]
            better = (t < t0[s]) | ((t == t0[s]) & (ids < id0[s]))
            s = s[better]
            t0[s], id0[s], anchor_rows[s] = t[better], ids[better], rows[better]
        for i in range(n):
            for k, d in reach:
                s, t = mine(rows_of(d, i))
                s = s[(t >= t0[s]) & (t - t0[s] <= w_us)]
                s = s[off[i, s] == _FAR]
                off[i, s] = k
        off = np.maximum.accumulate(off, axis=0)  # step i counts once steps 1..i all have a row
    depth = np.stack([np.count_nonzero(off <= h, axis=0) for h in range(len(later) + 1)]).astype(np.int8)
    value = day.array(breakdown)[anchor_rows] if breakdown else np.zeros(0, dtype=np.int8)
    return _Piece(ent, depth, value, later)


def _walk(
    days: Sequence[_Day],
    picked: list[list[_Rows]],
    entities: int,
    query: FunnelQuery,
    labels: _Labels,
    lo: int,
    hi: int,
) -> np.ndarray:
    """Entities (numbered below ``entities`` in ``picked``) reaching each step, per breakdown
    value: shape (steps, values of ``labels``), for times in ``[lo, hi)``."""
    steps = query.steps
    n = len(steps)
    breakdown = labels.column

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
    picked = [list(per_step) for per_step in picked]
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

    w_us = query.w_us
    anchor = np.zeros(entities if breakdown else 0, dtype=np.int64)
    reached: list[np.ndarray] = []
    if query.strict:
        # Step by step: an entity's first row of step i after its step i-1 and within the window
        # of its first step 1. Days come in time order, so the first day that has one wins.
        t1 = prev = np.zeros(0, dtype=np.int64)
        for i in range(n):
            first = np.full(entities, _NEVER, dtype=np.int64)
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
                new = first[e] == _NEVER
                first[e[new]] = t[new]
                if i == 0 and breakdown:
                    anchor[e[new]] = labels.of(day, rows[new])
            if i == 0:
                t1 = first
            prev = first
            reached.append(first != _NEVER)
    else:
        # Any order: from each entity's first row of any step (by time, then event id), which
        # steps it has within the window.
        t0 = np.full(entities, _NEVER, dtype=np.int64)
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
                    anchor[e] = labels.of(day, rows)
        for i in range(n):
            hit = np.zeros(entities, dtype=bool)
            for per_step in picked:
                e, t = per_step[i].ent, per_step[i].ts
                inside = (t >= t0[e]) & (t - t0[e] <= w_us)
                hit[e[inside]] = True
            reached.append(hit if i == 0 else reached[i - 1] & hit)
    if breakdown:
        return np.stack([np.bincount(anchor[r], minlength=len(labels.values)) for r in reached])
    return np.array([[np.count_nonzero(r)] for r in reached], dtype=np.int64)


def _answer(counts: np.ndarray, labels: _Labels, steps: Sequence[Step]) -> list[dict[str, Any]]:
    """The rows of a funnel's answer from its counts (steps x breakdown values)."""
    n = len(steps)
    breakdown = labels.column
    if counts[0].sum() == 0:
        return []
    names = [s.name() for s in steps]
    values = labels.values
    present = [c for c in range(counts.shape[1]) if counts[0, c] > 0]
    present.sort(key=lambda c: (values[c] is not None, values[c] if values[c] is not None else ""))
    out: list[dict[str, Any]] = []
    for c in present:
        for i in range(n):
            entities_i, first_n = int(counts[i, c]), int(counts[0, c])
            prev_n = int(counts[i - 1, c]) if i else entities_i
            row: dict[str, Any] = {}
            if breakdown:
                row[breakdown] = values[c]
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
