"""clicklake: a clickstream lakehouse on Apache Iceberg."""

from __future__ import annotations

from clicklake.config import Settings, load_settings
from clicklake.exceptions import ClickLakeError, ConfigError, InputError

__version__ = "0.1.0"

__all__ = [
    "ClickLakeError",
    "ConfigError",
    "InputError",
    "Settings",
    "__version__",
    "load_settings",
]
