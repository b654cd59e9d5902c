"""Models: page views, sessions, users, user mapping and daily KPIs, as SQL, and their runner."""

from __future__ import annotations

from clicklake.models.funnel import funnel
from clicklake.models.runner import build_models

__all__ = ["build_models", "funnel"]
