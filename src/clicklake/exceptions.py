"""The one exception hierarchy of clicklake.

Every error clicklake raises on purpose is a :class:`ClickLakeError`. Mistakes a user can fix
(bad config, unreadable input) also subclass the matching builtin, so ``except ValueError``
keeps working, and their message says what to do next. Errors worth retrying are marked with
:class:`TransientError`; everything else is terminal.
"""

from __future__ import annotations


class ClickLakeError(Exception):
    """Root of every error clicklake raises on purpose."""


class TransientError(ClickLakeError):
    """A failure that may succeed when retried (commit conflict, busy catalog, full disk freed)."""


class TerminalError(ClickLakeError):
    """A failure that retrying will not fix."""


class ConfigError(ValueError, TerminalError):
    """The configuration is invalid: a wrong key, a wrong value, an unreadable file."""


class InputError(ValueError, TerminalError):
    """Input that cannot be read at all (a missing or unreadable file, a bad flag value).

    Bad *events* never raise: they land in ``failed_events``. This is for input that is not
    there or cannot be opened.
    """


class StorageError(OSError, TerminalError):
    """The data directory or warehouse cannot be written (read-only, full, missing)."""


class CommitConflictError(TransientError):
    """An Iceberg commit lost a race with another writer and ran out of retries."""


class SchemaEvolutionError(ConfigError):
    """A schema or partition change Iceberg cannot apply in place; the message says what to do."""
