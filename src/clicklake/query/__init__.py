"""Read-only SQL (DuckDB) over the current snapshots of the clicklake tables."""

from __future__ import annotations

from clicklake.query.engine import connect, run_sql

__all__ = ["connect", "run_sql"]
