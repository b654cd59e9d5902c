"""The HTTP collector: Segment Tracking API in, durable spool lines out."""

from __future__ import annotations

from clicklake.collector.app import CollectorApp, create_app
from clicklake.collector.options import CollectorOptions

__all__ = ["CollectorApp", "CollectorOptions", "create_app"]
