"""Join attributes of a user table (plan, signup date, company, ...) onto events by ``user_id``.

``enrich.user_dimension.source`` is a Parquet file (``.parquet``/``.pq``), a CSV file
(``.csv``, with a header row) or an Iceberg table ``namespace.table`` of the clicklake catalog.
``key`` names its user id column (default ``user_id``), matched against the events' ``user_id``
(both compared as strings, so a numeric key matches ``"42"``). ``columns`` picks the columns to
add (default: all but the key); each lands as ``user_<name>``, or as ``<name>`` when it already
starts with ``user_``. A name that would collide with a canonical event column is refused.

All added columns are strings: values are cast to their text form (numbers ``"42"``, booleans
``"true"``, timestamps ISO-like; CSV cells are taken as written, ``"007"`` stays), so the ``events`` schema does not depend on the types of a
table someone else maintains. Nested columns (lists, structs) are refused.

The table is kept in memory, indexed by key; when a key appears more than once the last row
wins. Every ``REFRESH_INTERVAL_S`` seconds at most (never per row or per batch) the step checks
whether the source changed (file modification time and size; the Iceberg table's current
snapshot id) and reloads it. If a reload fails (a file half written, the catalog busy) the old
table stays in use and the next check tries again. Columns declared at build time stay the
same for the life of the step: a column that disappears from the source comes out null.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns
from clicklake.events.schema import EVENTS_ARROW, Column
from clicklake.exceptions import ConfigError

log = logging.getLogger("clicklake.enrich.user_dimension")

EVENT_KEY = "user_id"
"""The events column matched against the table's key."""

PREFIX = "user_"

REFRESH_INTERVAL_S = 5.0
"""How often, at most, the source is checked for a change."""

_FILE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_TABLE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def output_name(column: str) -> str:
    """The events column a user-table column lands in: ``plan`` -> ``user_plan``."""
    return column if column.startswith(PREFIX) else PREFIX + column


class Source:
    """Where the user table comes from: a Parquet or CSV file, or an Iceberg table.

    Args:
        settings: The settings (for the catalog) and ``enrich.user_dimension.source``.

    Raises:
        ConfigError: The source is empty, or neither a known file type nor a table name.
    """

    def __init__(self, settings: Settings) -> None:
        source = settings.enrich.user_dimension.source.strip()
        if not source:
            raise ConfigError(
                "enrich.user_dimension is enabled but has no source; set enrich.user_dimension.source "
                "(CLICKLAKE_ENRICH__USER_DIMENSION__SOURCE) to a .parquet or .csv file or an Iceberg "
                "table name 'namespace.table'"
            )
        self.description = source
        self._settings = settings
        self._catalog: Any = None
        self.path: Path | None = None
        self.format = ""
        suffix = Path(source).suffix.lower()
        if suffix in _FILE_SUFFIXES:
            self.path = Path(source).expanduser()
            self.format = _FILE_SUFFIXES[suffix]
        elif _TABLE_NAME.match(source) and "/" not in source and not Path(source).exists():
            self.format = "iceberg"
        else:
            raise ConfigError(
                f"enrich.user_dimension.source {source!r} is neither a .parquet/.pq/.csv file "
                "nor an Iceberg table name 'namespace.table'"
            )

    def _iceberg(self) -> Any:
        if self._catalog is None:
            from clicklake.lakehouse.catalog import open_catalog

            self._catalog = open_catalog(self._settings, write=False)
        return self._catalog.load_table(self.description)

    def version(self) -> Hashable:
        """What identifies the current content: (mtime, size) of a file, a snapshot id.

        Raises:
            Exception: The source cannot be reached (callers keep what they have).
        """
        if self.path is not None:
            stat = self.path.stat()
            return (stat.st_mtime_ns, stat.st_size)
        snapshot = self._iceberg().current_snapshot()
        return None if snapshot is None else snapshot.snapshot_id

    def schema(self) -> pa.Schema:
        """The table's Arrow schema.

        Raises:
            ConfigError: The source cannot be read.
        """
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return pq.read_schema(self._require_path())
            if self.format == "csv":
                return self.read().schema
            return self._iceberg().schema().as_arrow()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"enrich.user_dimension.source {self.description!r} cannot be read: {exc}"
            ) from exc

    def _require_path(self) -> Path:
        if self.path is None:  # pragma: no cover - guarded by format
            raise ConfigError("not a file source")
        return self.path

    def read(self) -> pa.Table:
        """The whole table.

        Raises:
            Exception: The source cannot be read (callers decide whether that is fatal).
        """
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(self._require_path())
        if self.format == "csv":
            import pyarrow.csv as pacsv

            # Every column as text, so that an id like "007" keeps its zeros; empty cells are null.
            path = self._require_path()
            with pacsv.open_csv(path) as reader:
                names = reader.schema.names
            convert = pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.large_string()), strings_can_be_null=True
            )
            return pacsv.read_csv(path, convert_options=convert)
        return self._iceberg().scan().to_arrow()


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.cast(pa.large_string())


class _Index:
    """The loaded table: key -> row number, and one string array per selected column."""

    def __init__(self, table: pa.Table, key: str, columns: tuple[str, ...]) -> None:
        if key not in table.column_names:
            raise ConfigError(f"enrich.user_dimension: the user table has no key column {key!r}")
        keys = _as_text(table.column(key)).to_pylist()
        # Later rows overwrite earlier ones: the last row of a key wins.
        self.rows: dict[str, int] = {k: i for i, k in enumerate(keys) if k is not None}
        self.values = [
            _as_text(table.column(c))
            if c in table.column_names
            else pa.nulls(table.num_rows, pa.large_string())
            for c in columns
        ]


class UserDimension:
    """The state behind the ``user_dimension`` step: the indexed table and when to refresh it.

    Args:
        source: Where the table comes from.
        key: Its user id column.
        columns: The columns to add, as named in the table.
        refresh_interval_s: How often, at most, to check the source for a change.
        clock: Monotonic seconds (replaceable in tests).

    Raises:
        ConfigError: The table cannot be read or has no key column.
    """

    def __init__(
        self,
        source: Source,
        key: str,
        columns: tuple[str, ...],
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.key = key
        self.columns = columns
        self.outputs = tuple(output_name(c) for c in columns)
        self.refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._version = source.version()
            table = source.read()
        except Exception as exc:
            raise ConfigError(
                f"enrich.user_dimension.source {source.description!r} cannot be read: {exc}"
            ) from exc
        self._index = _Index(table, key, columns)
        self._checked = clock()
        log.info("user_dimension loaded source=%s rows=%d", source.description, table.num_rows)

    def refresh(self, force: bool = False) -> bool:
        """Reload the table if the source changed and the check is due.

        Args:
            force: Check now, whatever the interval.

        Returns:
            Whether a new version was loaded.
        """
        now = self._clock()
        with self._lock:
            if not force and now - self._checked < self.refresh_interval_s:
                return False
            self._checked = now
            try:
                version = self.source.version()
                if version == self._version:
                    return False
                index = _Index(self.source.read(), self.key, self.columns)
            except Exception as exc:
                log.warning("user_dimension refresh failed source=%s error=%s", self.source.description, exc)
                return False
            self._index, self._version = index, version
        log.info("user_dimension reloaded source=%s users=%d", self.source.description, len(index.rows))
        return True

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Append the ``user_*`` columns to ``batch``."""
        self.refresh()
        index = self._index
        if batch.num_rows == 0 or EVENT_KEY not in batch.schema.names:
            arrays = [pa.nulls(batch.num_rows, pa.large_string()) for _ in self.outputs]
        else:
            encoded = pc.dictionary_encode(batch.column(EVENT_KEY))
            get = index.rows.get
            positions = pa.array([get(u) for u in encoded.dictionary.to_pylist()], type=pa.int64())
            rows = pc.take(positions, encoded.indices)
            arrays = [pc.take(values, rows) for values in index.values]
        return append_columns(batch, dict(zip(self.outputs, arrays, strict=True)))


def _select(schema: pa.Schema, key: str, wanted: list[str]) -> tuple[str, ...]:
    if key not in schema.names:
        raise ConfigError(
            f"enrich.user_dimension.key {key!r} is not a column of the user table "
            f"(it has {', '.join(schema.names)})"
        )
    names = tuple(wanted) if wanted else tuple(n for n in schema.names if n != key)
    for name in names:
        if name not in schema.names:
            raise ConfigError(f"enrich.user_dimension.columns: {name!r} is not a column of the user table")
        if name == key:
            raise ConfigError(
                f"enrich.user_dimension.columns: {name!r} is the key; it is already on the events"
            )
        if pa.types.is_nested(schema.field(name).type):
            raise ConfigError(
                f"enrich.user_dimension.columns: {name!r} is a nested column; pick scalar columns"
            )
        if output_name(name) in EVENTS_ARROW.names:
            raise ConfigError(
                f"enrich.user_dimension.columns: {name!r} would land as {output_name(name)!r}, "
                "a canonical event column; leave it out of enrich.user_dimension.columns"
            )
    return names


def build(settings: Settings) -> Step:
    """The ``user_dimension`` step: ``user_*`` columns from a user table.

    Args:
        settings: ``enrich.user_dimension`` (source, key, columns) and, for an Iceberg source,
            the catalog settings.

    Returns:
        The step; its columns, all strings, are read from the table's schema now.

    Raises:
        ConfigError: No source, an unreadable source, or a key or column that is not there.
    """
    cfg = settings.enrich.user_dimension
    source = Source(settings)
    columns = _select(source.schema(), cfg.key, cfg.columns)
    state = UserDimension(source, cfg.key, columns)
    declared = tuple(
        Column(output_name(c), "string", f"{c} of the user table {source.description}, as text")
        for c in columns
    )
    return Step("user_dimension", state, declared)
