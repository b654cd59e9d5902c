"""The dashboard page and the JSON API, served beside the collector by ``clicklake serve``."""

from __future__ import annotations
