"""Engines run the pipeline: ``local`` (default, embedded) and ``spark``.

Engines are found by name and imported lazily, so the embedded path never imports Spark.
"""

from __future__ import annotations

import importlib
from typing import Any

from clicklake.exceptions import ConfigError

_ENGINES = {"local": "clicklake.engines.local", "spark": "clicklake.engines.spark"}
# The extra that brings an engine's heavy dependency, named when it is missing.
_EXTRAS = {"spark": ("pyspark", "spark")}


def load_engine(name: str) -> Any:
    """The engine module registered as ``name``.

    Raises:
        ConfigError: No engine has that name.
    """
    try:
        module = _ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; available: {', '.join(sorted(_ENGINES))}") from None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if name in _EXTRAS and _EXTRAS[name][0] in str(exc):
            raise ConfigError(
                f"the {name} engine needs {_EXTRAS[name][0]}: pip install 'clicklake[{_EXTRAS[name][1]}]'"
                + (" and `make spark-jars`" if name == "spark" else "")
            ) from exc
        raise
