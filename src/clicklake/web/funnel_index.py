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
from dataclasses import dataclass
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
class _Day:
    table: pa.Table  # sorted by (ts, eid); column "file" numbers each row's data file
    files: dict[str, int]  # path -> its number in "file"


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
                        pieces.append(
                            part.append_column("file", pa.array(np.full(part.num_rows, next_no, np.int16)))
                        )
                        next_no += 1
                table = _narrow_codes(pa.concat_tables(pieces).unify_dictionaries().combine_chunks())
                # By entity, then time (then event id): a funnel's stable sort by entity over the
                # days in a row then only merges sorted runs, and keeps each entity in time order.
                table = table.take(
                    pc.sort_indices(table, [("k", "ascending"), ("ts", "ascending"), ("eid", "ascending")])
                )
                self._days[d] = _Day(table, numbers)
            self._track_ids(parts, rebuild=removed)
            self._key = key
            return True

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

    def rows(self, first: date, last: date) -> list[pa.Table]:
        """The index tables of the days ``first..last``."""
        lo, hi = (first - _EPOCH).days, (last - _EPOCH).days
        with self._lock:
            return [d.table for k, d in sorted(self._days.items()) if lo <= k <= hi and d.table.num_rows]


def _per_value(dictionary: pa.Array, test: Any, null_value: bool) -> np.ndarray:
    """``test`` over a dictionary's values (the NULL stand-in gets ``null_value``)."""
    hits = np.asarray(pc.fill_null(test(dictionary), False).to_numpy(zero_copy_only=False), dtype=bool)
    hits[np.asarray(pc.equal(dictionary, _NULL).to_numpy(zero_copy_only=False), dtype=bool)] = null_value
    return hits


def _coded(table: pa.Table, name: str) -> tuple[np.ndarray, pa.Array]:
    arr = table[name].chunk(0) if table[name].num_chunks == 1 else table[name].combine_chunks()
    return arr.indices.to_numpy(), arr.dictionary


def _step_bits(table: pa.Table, steps: Sequence[Step]) -> np.ndarray:
    """Per row, bit ``i`` set when the row matches step ``i`` (dictionary lookups, one per column)."""
    n = table.num_rows
    bits = np.full(n, (1 << len(steps)) - 1, dtype=np.uint16)
    if any(s.event is not None for s in steps):
        idx, values = _coded(table, "event_name")
        lut = np.zeros(len(values), dtype=np.uint16)
        for i, s in enumerate(steps):
            lut |= (
                (
                    _per_value(values, lambda v, e=s.event: pc.equal(v, e), False)
                    if s.event is not None
                    else True
                )
                * np.uint16(1 << i)
            ).astype(np.uint16)
        bits &= lut[idx]
    if any(s.path is not None for s in steps):
        idx, values = _coded(table, "url_path")
        lut = np.zeros(len(values), dtype=np.uint16)
        for i, s in enumerate(steps):
            if s.path is None:
                lut |= np.uint16(1 << i)
                continue
            # RE2 search semantics, as DuckDB's regexp_matches; a NULL path is matched as ''.
            empty = bool(pc.match_substring_regex(pa.array([""]), s.path)[0].as_py())
            hit = _per_value(values, lambda v, r=s.path: pc.match_substring_regex(v, r), empty)
            lut |= (hit * np.uint16(1 << i)).astype(np.uint16)
        bits &= lut[idx]
    return bits


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
    tables: Sequence[pa.Table],
    steps: Sequence[Step],
    window_s: float,
    order: str,
    breakdown: str | None,
    start: datetime,
    end: datetime,
    apps: Collection[str] | None,
    app: str | None,
    include_bots: bool,
    repeated: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Entities reaching each step over the index rows ``tables`` (see :func:`clicklake.models.funnel.funnel`).

    ``repeated``: the event id hashes that may occur more than once (default: find them here).

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
    names = [s.name() for s in steps]
    bd_values: list[Any] = [None]
    bd_global: dict[Any, int] = {None: 0}
    app_global: dict[str, int] = {}
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("k", "ts", "cts", "eid", "bits", "app", "bd")}
    allowed = None if apps is None else set(apps)
    for t in tables:
        bits = _step_bits(t, steps)
        keep = bits != 0
        if not include_bots:
            keep &= _column(t, "is_bot") == 0
        app_idx, app_values = _coded(t, "app_id")
        app_names = [None if v == _NULL else v for v in app_values.to_pylist()]
        ok_app = np.array(
            [(allowed is None or v in allowed) and (app is None or v == app) for v in app_names], dtype=bool
        )
        if not ok_app.all():
            keep &= ok_app[app_idx]
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            continue
        for name in ("k", "ts", "cts", "eid"):
            cols[name].append(_column(t, name)[idx])
        cols["bits"].append(bits[idx])
        app_map = np.array(
            [app_global.setdefault(v or "", len(app_global)) for v in app_names], dtype=np.int64
        )
        cols["app"].append(app_map[app_idx[idx]])
        if breakdown:
            bd_idx, bd_dict = _coded(t, breakdown)
            remap = []
            for v in bd_dict.to_pylist():
                key = None if v == _NULL else v
                if key not in bd_global:
                    bd_global[key] = len(bd_values)
                    bd_values.append(key)
                remap.append(bd_global[key])
            cols["bd"].append(np.asarray(remap, dtype=np.int64)[bd_idx[idx]])
        else:
            cols["bd"].append(np.zeros(len(idx), dtype=np.int64))
    if not cols["k"]:
        return []
    # Day after day, each day by (entity, time, event id).
    k, ts, cts, eid, bits, app_code, bd_code = (np.concatenate(cols[name]) for name in cols)
    # Dedup: of the copies of an event id, the one collected first (then derived first).
    keep_row = (ts >= lo) & (ts < hi)
    if repeated is None:
        by_id = np.sort(eid)
        repeated = np.unique(by_id[1:][by_id[1:] == by_id[:-1]])
    if len(repeated):
        rows_dup = np.flatnonzero(np.isin(eid, repeated))
        o = rows_dup[np.lexsort((ts[rows_dup], cts[rows_dup], eid[rows_dup]))]
        later = np.zeros(len(o), dtype=bool)
        later[1:] = eid[o][1:] == eid[o][:-1]
        keep_row[o[later]] = False
    rows = np.flatnonzero(keep_row)
    if len(rows) == 0:
        return []
    # Entities (app_id, k); a stable sort by entity keeps each one's rows in time order (the days
    # come in order), and with one app it only merges the days' sorted runs.
    ent_key = k[rows] + app_code[rows].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    o = np.argsort(ent_key, kind="stable")
    rows, ent_key = rows[o], ent_key[o]
    starts = _first_of_runs(ent_key)
    ent = np.cumsum(np.r_[False, ent_key[1:] != ent_key[:-1]]) if len(ent_key) else ent_key
    n_ent = len(starts)
    t = ts[rows]
    b = bits[rows]
    reached = np.zeros((n, n_ent), dtype=bool)
    anchor = np.zeros(n_ent, dtype=np.int64)
    w_us = round(window_s * 1_000_000)
    never = np.iinfo(np.int64).max
    if order == "strict":
        r1 = np.flatnonzero(b & 1)
        first = r1[_first_of_runs(ent[r1])]
        e1 = ent[first]
        t1 = np.full(n_ent, never, dtype=np.int64)
        t1[e1] = t[first]
        reached[0, e1] = True
        anchor[e1] = bd_code[rows[first]]
        prev = t1.copy()
        for i in range(1, n):
            ri = np.flatnonzero(b & (1 << i))
            ei = ent[ri]
            ok = reached[i - 1, ei] & (t[ri] > prev[ei]) & (t[ri] - t1[ei] <= w_us)
            ri, ei = ri[ok], ei[ok]
            at = _first_of_runs(ei)
            reached[i, ei[at]] = True
            prev = np.full(n_ent, never, dtype=np.int64)
            prev[ei[at]] = t[ri[at]]
    else:
        any_rows = np.flatnonzero(b)
        first = any_rows[_first_of_runs(ent[any_rows])]
        e0 = ent[first]
        t0 = np.full(n_ent, never, dtype=np.int64)
        t0[e0] = t[first]
        anchor[e0] = bd_code[rows[first]]
        inside = (t >= t0[ent]) & (t - t0[ent] <= w_us)
        hit = np.zeros((n, n_ent), dtype=bool)
        for i in range(n):
            hit[i, ent[inside & (b & (1 << i) != 0)]] = True
        reached[0] = hit[0]
        for i in range(1, n):
            reached[i] = reached[i - 1] & hit[i]
    counts = np.stack([np.bincount(anchor[reached[i]], minlength=len(bd_values)) for i in range(n)])
    present = [c for c in range(len(bd_values)) if counts[0, c] > 0]
    present.sort(key=lambda c: (bd_values[c] is not None, bd_values[c] if bd_values[c] is not None else ""))
    out: list[dict[str, Any]] = []
    for c in present:
        for i in range(n):
            entities, first_n = int(counts[i, c]), int(counts[0, c])
            prev_n = int(counts[i - 1, c]) if i else entities
            row: dict[str, Any] = {}
            if breakdown:
                row[breakdown] = bd_values[c]
            row.update(
                {
                    "step": i + 1,
                    "step_name": names[i],
                    "entities": entities,
                    "conversion_from_start": entities / first_n if first_n else None,
                    "conversion_from_previous": entities / prev_n if prev_n else None,
                    "drop_off": prev_n - entities,
                    "drop_off_rate": 1.0 - entities / prev_n if prev_n else None,
                }
            )
            out.append(row)
    return out
