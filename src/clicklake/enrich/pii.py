"""Pseudonymization of personal data: salted hashes in place of the values.

Each entry of ``enrich.pii.fields`` is either

- a column name (``user_id``, ``anonymous_id``, ``user_ipaddress``, a ``user_*`` column of the
  user dimension, ...): every non-null value is replaced by its hash; or
- a dotted path into one of the JSON columns ``properties``, ``traits`` or ``context``
  (``traits.email``, ``context.traits.phone``, ``traits.address.street``): only the value at
  that path is replaced by its hash, as a JSON string, and the document stays valid JSON. A row
  where the path is missing, is JSON ``null`` or runs through a non-object is left exactly as
  it was. Numbers and booleans are hashed on their JSON text, objects and arrays on their
  compact JSON text.

The hash is HMAC-SHA256 keyed with ``enrich.pii.salt``, as 64 lowercase hex digits: the same
value gives the same hash in every column and every JSON path, so hashed columns still join
and count distinct, but without the salt a hash cannot be reversed by hashing guesses. The
salt is a secret (``CLICKLAKE_ENRICH__PII__SALT``); it is never logged.

``user_key`` is ``coalesce(user_id, anonymous_id)``, the partition and session key. When
either of those is hashed, ``user_key`` is recomputed from the hashed values, so that it stays
consistent with them and sessions are still built per (pseudonymous) person.

Plain columns are hashed once per distinct value, with a bounded cache that survives across
batches. JSON paths are extracted and patched by DuckDB (``json_extract_string`` and
``json_merge_patch``) once per distinct document of the column; only the extracted values are
hashed in Python, once each. A patched document is re-serialized compactly by DuckDB (its keys
may come out in another order and numbers in their shortest form); unpatched documents are
untouched.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import BoundedCache, Step, append_columns, encode, thread_connection
from clicklake.events.schema import EVENTS_ARROW
from clicklake.exceptions import ConfigError

JSON_COLUMNS = ("properties", "traits", "context")
"""The columns that hold JSON documents and accept dotted paths."""

KEY_SOURCES = ("user_id", "anonymous_id")
"""The columns ``user_key`` is derived from."""

CACHE_SIZE = 100_000
"""Distinct values whose hash is remembered across batches."""

_SALT_HINT = "set CLICKLAKE_ENRICH__PII__SALT (or enrich.pii.salt) to a long random secret"


@dataclass(frozen=True)
class PiiField:
    """One entry of ``enrich.pii.fields``.

    Attributes:
        column: The column it lives in.
        path: Keys inside the column's JSON document; empty for the whole column.
    """

    column: str
    path: tuple[str, ...] = ()

    @property
    def json_path(self) -> str:
        """The DuckDB JSONPath, every key quoted: ``$."traits"."email"``."""
        return "$" + "".join(f'."{key}"' for key in self.path)

    def patch_around(self) -> tuple[str, str]:
        """The JSON merge patch that sets the path to a string, split where the string goes.

        ``traits.email`` gives ``('{"traits":{"email":"', '"}}')``.
        """
        prefix = "".join("{" + json.dumps(key) + ":" for key in self.path)
        return prefix + '"', '"' + "}" * len(self.path)


def parse_fields(fields: Sequence[str]) -> tuple[PiiField, ...]:
    """Read ``enrich.pii.fields``.

    Args:
        fields: Column names and dotted JSON paths.

    Returns:
        One :class:`PiiField` per distinct entry, in order.

    Raises:
        ConfigError: An entry is empty, has an empty key, quotes or backslashes, is a path into
            a column that is not JSON, or names a canonical column that is not a string.
    """
    out: list[PiiField] = []
    for raw in fields:
        parts = tuple(raw.strip().split("."))
        if not raw.strip() or any(not p or '"' in p or "\\" in p for p in parts):
            raise ConfigError(
                f"enrich.pii.fields: {raw!r} is not a column name or a dotted JSON path "
                "such as 'traits.email' (keys must be non-empty, without quotes or backslashes)"
            )
        column, path = parts[0], parts[1:]
        if path and column not in JSON_COLUMNS:
            raise ConfigError(
                f"enrich.pii.fields: {raw!r} is a path into {column!r}, which is not a JSON column; "
                f"paths must start with one of {', '.join(JSON_COLUMNS)}"
            )
        if column in EVENTS_ARROW.names and not pa.types.is_large_string(EVENTS_ARROW.field(column).type):
            raise ConfigError(f"enrich.pii.fields: {raw!r} is not a string column and cannot be hashed")
        field = PiiField(column, path)
        if field not in out:
            out.append(field)
    return tuple(out)


def _large(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == pa.large_string() else arr.cast(pa.large_string())


class PiiHasher:
    """The state behind the ``pii`` step: the key, the fields, the hash cache.

    Args:
        salt: The HMAC key; must not be empty.
        fields: What to hash.
        cache_size: How many distinct values to remember.

    Raises:
        ConfigError: ``salt`` is empty.
    """

    def __init__(self, salt: bytes, fields: Sequence[PiiField], cache_size: int = CACHE_SIZE) -> None:
        if not salt:
            raise ConfigError(f"enrich.pii is enabled but its salt is empty; {_SALT_HINT}")
        self._key = salt
        self.fields = tuple(fields)
        self._cache: BoundedCache[str] = BoundedCache(cache_size)

    def __repr__(self) -> str:  # the salt stays out of reprs, logs and tracebacks
        return f"PiiHasher(fields={[f.column + ''.join('.' + k for k in f.path) for f in self.fields]})"

    def digest(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` (UTF-8) with the salt, as lowercase hex."""
        return hmac.digest(self._key, value.encode("utf-8"), "sha256").hex()

    def digest_many(self, values: list[str]) -> list[str]:
        """Hash distinct values, from the cache where possible.

        Args:
            values: Distinct strings.

        Returns:
            Their hashes, in order.
        """
        return self._cache.get_many(values, lambda missing: [self.digest(v) for v in missing])

    def hash_column(self, values: pa.Array) -> pa.Array:
        """Every non-null value of a string column replaced by its hash (nulls stay null)."""
        encoded = encode(values)
        digests = pa.array(self.digest_many(encoded.values()), type=pa.large_string())
        return pc.take(digests, encoded.indices)

    @staticmethod
    def _select(expression: str, table: pa.Table) -> pa.Array:
        """``expression`` over the rows of ``table``, on this thread's DuckDB connection."""
        return _large(thread_connection().from_arrow(table).select(expression).to_arrow_table().column(0))

    def hash_json_path(self, docs: pa.Array, field: PiiField) -> pa.Array:
        """The value at ``field.path`` in each JSON document replaced by its hash.

        Each distinct document is extracted and patched once (a user sends the same traits event
        after event, and most events have none), then spread back to its rows.

        Args:
            docs: A string column of JSON documents (nulls and invalid JSON are left as they are).
            field: The path.

        Returns:
            The column, with documents that hold a non-null value at the path patched.
        """
        docs = _large(docs)
        if docs.null_count == len(docs):
            return docs
        encoded = encode(docs)
        distinct = _large(encoded.dictionary)
        patched = self._patch_distinct(distinct, field)
        return docs if patched is distinct else pc.take(patched, encoded.indices)

    def _patch_distinct(self, docs: pa.Array, field: PiiField) -> pa.Array:
        """:meth:`hash_json_path` over distinct, non-null documents; ``docs`` itself if none has
        a value at the path."""
        path = field.json_path.replace("'", "''")
        found = self._select(
            f"CASE WHEN json_valid(c) THEN json_extract_string(c, '{path}') END", pa.table({"c": docs})
        )
        if found.null_count == len(found):
            return docs
        prefix, suffix = field.patch_around()
        patch = pc.binary_join_element_wise(
            pa.scalar(prefix, pa.large_string()),
            self.hash_column(found),
            pa.scalar(suffix, pa.large_string()),
            pa.scalar("", pa.large_string()),
        )
        return self._select(
            "CASE WHEN p IS NULL THEN c ELSE CAST(json_merge_patch(c, p) AS VARCHAR) END",
            pa.table({"c": docs, "p": patch}),
        )

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with the configured fields hashed (and ``user_key`` recomputed if needed)."""
        if batch.num_rows == 0 or not self.fields:
            return batch
        names = batch.schema.names
        columns: dict[str, pa.Array] = {}
        for field in self.fields:
            if field.column not in names:
                raise ConfigError(
                    f"enrich.pii.fields: column {field.column!r} is not in the events; "
                    "remove it or check the enrichment step that should add it"
                )
            current = columns.get(field.column, batch.column(field.column))
            if not (pa.types.is_string(current.type) or pa.types.is_large_string(current.type)):
                raise ConfigError(f"enrich.pii.fields: column {field.column!r} is not a string column")
            if field.path:
                columns[field.column] = self.hash_json_path(current, field)
            else:
                columns[field.column] = self.hash_column(current)
        if "user_key" in names and any(c in columns for c in KEY_SOURCES):
            sources = [columns.get(c, batch.column(c)) for c in KEY_SOURCES if c in names]
            columns["user_key"] = _large(pc.coalesce(*sources))
        return append_columns(batch, columns)


def build(settings: Settings) -> Step:
    """The ``pii`` step: hashes ``enrich.pii.fields``; rewrites columns, adds none.

    Args:
        settings: ``enrich.pii.fields`` and ``enrich.pii.salt``.

    Returns:
        The step.

    Raises:
        ConfigError: The step is enabled and the salt is empty, or a field is malformed.
    """
    cfg = settings.enrich.pii
    salt = cfg.salt.get_secret_value()
    if cfg.enabled and not salt:
        raise ConfigError(f"enrich.pii is enabled but its salt is empty; {_SALT_HINT}")
    fields = parse_fields(cfg.fields)
    if not cfg.enabled or not fields:
        return Step("pii", lambda batch: batch)
    return Step("pii", PiiHasher(salt.encode("utf-8"), fields))
