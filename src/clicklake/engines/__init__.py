"""Engines run the pipeline: ``local`` (default, embedded) and, later, ``spark``.

Engines are found by name and imported lazily, so the embedded path never imports Spark.
"""

from __future__ import annotations

import importlib
from typing import Any

from clicklake.exceptions import ConfigError

_ENGINES = {"local": "clicklake.engines.local"}


def load_engine(name: str) -> Any:
    """The engine module registered as ``name``.

    Raises:
        ConfigError: No engine has that name.
    """
    try:
        module = _ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; available: {', '.join(sorted(_ENGINES))}") from None
    return importlib.import_module(module)
