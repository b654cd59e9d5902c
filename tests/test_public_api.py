"""The package's public surface is small and listed: ``__all__`` is exactly its public names."""

from __future__ import annotations

import clicklake


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(clicklake) if not name.startswith("_")}
    # submodules imported as a side effect of importing the package are not API
    public -= {
        "annotations",
        "config",
        "exceptions",
        "events",
        "sources",
        "lakehouse",
        "enrich",
        "engines",
        "models",
        "query",
        "logs",
        "cli",
        "status",
        "collector",
        "web",
        "metrics",
    }
    assert set(clicklake.__all__) == public | {"__version__"}
    assert clicklake.__all__ == sorted(clicklake.__all__)


def test_user_errors_are_also_builtin_errors() -> None:
    assert issubclass(clicklake.ConfigError, ValueError)
    assert issubclass(clicklake.InputError, ValueError)
    assert issubclass(clicklake.ConfigError, clicklake.ClickLakeError)
