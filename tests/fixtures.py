"""Shared fixtures: settings on a temporary data directory, and a catalog with the tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clicklake.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Embedded defaults on a fresh data directory, unaffected by the caller's environment."""
    monkeypatch.chdir(tmp_path)
    yield load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
