"""Truncation of ``user_ipaddress``, after geolocation has used the full address.

An IPv4 address keeps its first ``enrich.ip_anonymization.ipv4_octets`` octets and the rest is
zeroed (3: ``203.0.113.77`` -> ``203.0.113.0``); an IPv6 address keeps its first
``ipv6_segments`` 16-bit groups and is written in compressed form (3: ``2001:db8:85a3::8a2e``
-> ``2001:db8:85a3::``). An IPv4-mapped IPv6 address (``::ffff:203.0.113.77``) follows the IPv4
rule and stays mapped. 4 octets and 8 groups keep valid addresses exactly as sent.

A value that is not an IP address at all becomes null, whatever the settings: the column is
declared to hold an address, and a free-text value in it could identify someone.

Dotted-quad IPv4 addresses are recognized and truncated by Arrow regular expressions over the
distinct values of a batch; anything else is parsed once per distinct value with ``ipaddress``,
with a bounded cache that survives across batches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich import kernels
from clicklake.enrich.base import BoundedCache, Step, append_columns, encode, thread_connection

IP_COLUMN = "user_ipaddress"

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"^{_OCTET}(?:\.{_OCTET}){{3}}$"
"""A dotted-quad IPv4 address exactly as ``ipaddress`` accepts it (no leading zeros)."""

CACHE_SIZE = 100_000
"""Distinct addresses remembered across batches."""


def anonymizer(ipv4_octets: int, ipv6_segments: int) -> Callable[[str], str | None]:
    """The function that truncates one address.

    Args:
        ipv4_octets: Octets of an IPv4 address to keep (0-4).
        ipv6_segments: 16-bit groups of an IPv6 address to keep (0-8).

    Returns:
        A function from an address string to its truncated form, or ``None`` when the string
        is not an IP address.

    Raises:
        ValueError: A count is out of range.
    """
    if not 0 <= ipv4_octets <= 4 or not 0 <= ipv6_segments <= 8:
        raise ValueError(f"ipv4_octets must be 0-4 and ipv6_segments 0-8, got {ipv4_octets}, {ipv6_segments}")
    v4_mask = (0xFFFFFFFF << (32 - 8 * ipv4_octets)) & 0xFFFFFFFF
    v6_mask = ((1 << 128) - 1) ^ ((1 << (128 - 16 * ipv6_segments)) - 1)

    def anonymize(value: str) -> str | None:
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv4Address):
            if ipv4_octets == 4:
                return value
            return str(ipaddress.IPv4Address(int(address) & v4_mask))
        if address.ipv4_mapped is not None:
            if ipv4_octets == 4:
                return value
            # Written out by hand: how str() prints a mapped address differs across Pythons.
            return f"::ffff:{ipaddress.IPv4Address(int(address.ipv4_mapped) & v4_mask)}"
        if ipv6_segments == 8:
            return value
        return str(ipaddress.IPv6Address(int(address) & v6_mask))

    return anonymize


class IpAnonymizer:
    """The state behind the ``ip_anonymization`` step: the rule and a bounded cache.

    Args:
        ipv4_octets: Octets of an IPv4 address to keep.
        ipv6_segments: 16-bit groups of an IPv6 address to keep.
        cache_size: How many distinct values to remember.
    """

    def __init__(self, ipv4_octets: int, ipv6_segments: int, cache_size: int = CACHE_SIZE) -> None:
        self._anonymize = anonymizer(ipv4_octets, ipv6_segments)
        self._ipv4_octets = ipv4_octets
        self._cache: BoundedCache[str | None] = BoundedCache(cache_size)

    def anonymize_many(self, values: list[str]) -> list[str | None]:
        """Truncate distinct values, from the cache where possible.

        Args:
            values: Distinct address strings.

        Returns:
            The truncated addresses (``None`` for invalid ones), in order.
        """
        return self._cache.get_many(values, lambda missing: [self._anonymize(v) for v in missing])

    def _truncate_ipv4(self, values: pa.Array) -> pa.Array:
        """Truncate values already known to be dotted-quad IPv4 addresses, in Arrow."""
        if self._ipv4_octets == 4:
            return values
        if self._ipv4_octets == 0:
            return pc.if_else(pc.is_valid(values), pa.scalar("0.0.0.0", values.type), values)
        kept = r"^([^.]+" + r"\.[^.]+" * (self._ipv4_octets - 1) + r")\..*$"
        return pc.replace_substring_regex(values, kept, r"\1" + ".0" * (4 - self._ipv4_octets))

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with ``user_ipaddress`` truncated."""
        if batch.num_rows == 0 or IP_COLUMN not in batch.schema.names:
            return batch
        # The same encoding as the geoip step's (and, for context, the campaign step's).
        encoded = encode(batch.column(IP_COLUMN))
        distinct = encoded.dictionary
        # Plain IPv4, the bulk of the traffic, is handled by Arrow regexes; Python sees the rest.
        is_ipv4 = pc.match_substring_regex(distinct, _IPV4)
        others = pc.invert(is_ipv4)
        rest = self.anonymize_many(pc.filter(distinct, others).to_pylist())
        values = pc.replace_with_mask(
            self._truncate_ipv4(distinct), others, pa.array(rest, type=distinct.type)
        )
        anonymized = pc.take(values, encoded.indices)
        out = {IP_COLUMN: anonymized}
        if "context" in batch.schema.names:
            context = batch.column("context")
            # The compiled kernel splices each row's address in place; without it, each
            # distinct (context, address) pair is rewritten by DuckDB, with the same result.
            scrubbed = kernels.replace_quoted(context, batch.column(IP_COLUMN), anonymized)
            if scrubbed is None:
                scrubbed = _scrub_context(context, encoded.indices, distinct, values)
            out["context"] = scrubbed
        return append_columns(batch, out)


def _scrub_context(
    context: pa.Array, ip_indices: pa.Array, distinct: pa.Array, anonymized: pa.Array
) -> pa.Array:
    """The context JSON with the original address (``context.ip``) replaced by the anonymized
    one, so the full address does not survive in the JSON beside the truncated column: every
    ``"<address>"`` in it becomes ``"<anonymized>"`` (``null`` for a value that is no address).
    What :func:`clicklake.enrich.kernels.replace_quoted` does row by row, when it is built.

    Rewritten once per distinct (context, address) pair: a visitor sends the same context event
    after event, and rewriting every row's JSON cost more than the rest of the step.

    Args:
        context: The ``context`` column.
        ip_indices: Each row's address, as an index into ``distinct`` (null: no address).
        distinct: The distinct original addresses.
        anonymized: Their anonymized values, aligned with ``distinct``.
    """
    m = len(distinct)
    if m == 0:
        return context
    ctx = encode(context)
    # One int64 per row naming its (context, address) pair; null when either is null (kept as is).
    pair = pc.add(
        pc.multiply(ctx.indices.cast(pa.int64()), pa.scalar(m, pa.int64())), ip_indices.cast(pa.int64())
    )
    pairs = pc.dictionary_encode(pair)
    ci = pc.divide(pairs.dictionary, pa.scalar(m, pa.int64()))
    ii = pc.subtract(pairs.dictionary, pc.multiply(ci, pa.scalar(m, pa.int64())))
    table = pa.table(
        {"c": pc.take(ctx.dictionary, ci), "o": pc.take(distinct, ii), "a": pc.take(anonymized, ii)}
    )
    result = (
        thread_connection()
        .from_arrow(table)
        .select(
            """CASE WHEN c IS NULL OR o IS NULL OR o IS NOT DISTINCT FROM a
                         OR NOT contains(c, '"' || o || '"') THEN c
                    ELSE replace(c, '"' || o || '"', COALESCE('"' || a || '"', 'null')) END AS c"""
        )
        .to_arrow_table()
    )
    scrubbed = pc.take(result.column("c").combine_chunks().cast(context.type), pairs.indices)
    return pc.if_else(pc.is_null(pair), context, scrubbed) if pair.null_count else scrubbed


def build(settings: Settings) -> Step:
    """The ``ip_anonymization`` step: rewrites ``user_ipaddress``; adds no column.

    Args:
        settings: ``enrich.ip_anonymization.ipv4_octets`` and ``ipv6_segments``.

    Returns:
        The step.
    """
    cfg = settings.enrich.ip_anonymization
    return Step("ip_anonymization", IpAnonymizer(cfg.ipv4_octets, cfg.ipv6_segments))
