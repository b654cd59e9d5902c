"""The audit trail: every API call and SQL statement, buffered and appended to ``audit_log``.

Rows are buffered in memory and appended in one Iceberg commit every ``api.audit_flush_s``
(and on :meth:`AuditLog.close`, which the web app calls at shutdown), so a busy API makes one
commit per interval, not one per request. A failed append keeps the rows for the next try.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clicklake.config import Settings
from clicklake.exceptions import ClickLakeError
from clicklake.lakehouse.audit import append_audit
from clicklake.query.access import Role

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger("clicklake.audit")

#: Buffered rows kept at most when appends keep failing (oldest dropped, and logged).
MAX_PENDING = 100_000
# Snapshots of audit_log a serving process lets pile up before it expires all but the last
# AUDIT_KEEP_SNAPSHOTS: a flush every few seconds adds one, and every append copies the table's
# whole metadata (all its snapshots), so an unbounded history makes each flush slower, beside the
# API's requests. The rows stay: an append-only table's data files are all in its current snapshot.
AUDIT_MAX_SNAPSHOTS = 60
AUDIT_KEEP_SNAPSHOTS = 10


def audit_row(
    role: Role | None,
    *,
    kind: str,
    endpoint: str,
    allowed: bool,
    status: int,
    statement: str | None = None,
    reason: str = "",
    rows: int | None = None,
    duration_ms: float | None = None,
    client: str | None = None,
    token_name: str | None = None,
) -> dict[str, Any]:
    """One ``audit_log`` row (``role`` is ``None`` when the caller was not authenticated)."""
    return {
        "audit_id": str(uuid.uuid4()),
        "tstamp": datetime.now(UTC),
        "token_name": role.name if role else token_name,
        "role": role.label if role else None,
        "apps": role.apps_text() if role else None,
        "kind": kind,
        "endpoint": endpoint,
        "statement": statement[:10_000] if statement is not None else None,
        "status": status,
        "allowed": allowed,
        "reason": reason[:2000],
        "rows_returned": rows,
        "duration_ms": duration_ms,
        "client": client,
    }


class AuditLog:
    """Buffers audit rows and appends them to ``audit_log`` in the background.

    Args:
        settings: The settings (catalog, ``api.audit_flush_s``).
        background: Flush from a background thread every ``api.audit_flush_s``; without it,
            only :meth:`flush` and :meth:`close` write.
    """

    def __init__(self, settings: Settings, background: bool = True):
        self.settings = settings
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The table as the last flush left it: the next one does not open the catalog again.
        self._table: Table | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="clicklake-audit", daemon=True)
            self._thread.start()

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row (from :func:`audit_row`)."""
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > MAX_PENDING:
                dropped = len(self._rows) - MAX_PENDING
                del self._rows[:dropped]
                log.error("event=audit_rows_dropped rows=%d reason=appends_failing", dropped)

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Append every queued row now; returns how many were written.

        Raises:
            StorageError: The append failed (the rows stay queued).
        """
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                self._table = append_audit(self.settings, rows, table=self._table)
            except BaseException:
                self._table = None
                with self._lock:
                    self._rows[:0] = rows
                raise
            if self._table is not None and len(self._table.metadata.snapshots) > AUDIT_MAX_SNAPSHOTS:
                self._expire(self._table)
            return len(rows)

    def _expire(self, table: Table) -> None:
        """Expire all but the last :data:`AUDIT_KEEP_SNAPSHOTS` snapshots of ``audit_log`` (a
        failure is logged; the next flush past the limit tries again)."""
        from clicklake.lakehouse.maintenance import expire

        opts = self.settings.maintenance.model_copy(
            update={"snapshot_max_age_hours": 0, "keep_last_snapshots": AUDIT_KEEP_SNAPSHOTS}
        )
        try:
            result = expire(table, opts)
            log.info("event=audit_snapshots_expired expired=%d", result.snapshots_expired)
        except Exception as exc:  # the audit rows are written; only the history waits
            log.warning("event=audit_expire_failed error=%r", str(exc))
        self._table = None  # reloaded by the next append

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.api.audit_flush_s):
            try:
                self.flush()
            except ClickLakeError as exc:
                log.error("event=audit_flush_failed error=%r", str(exc))

    def close(self) -> None:
        """Stop the background thread and write what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()


def audited_local_sql(settings: Settings, sql: str) -> Any:
    """``clicklake sql``: run ``sql`` as the local role and append its audit row before returning.

    Args:
        settings: The settings.
        sql: The statement.

    Returns:
        The result (an Arrow table).

    Raises:
        InputError: The statement was refused or failed (it is audited first).
    """
    import getpass
    import time

    from clicklake.exceptions import InputError
    from clicklake.query.access import LOCAL_ROLE, AccessDenied
    from clicklake.query.engine import run_sql

    t0 = time.perf_counter()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    row: dict[str, Any]
    try:
        table = run_sql(settings, sql)
    except InputError as exc:
        denied = isinstance(exc, AccessDenied)
        row = audit_row(
            LOCAL_ROLE,
            kind="sql",
            endpoint="clicklake sql",
            statement=sql,
            allowed=not denied,
            status=403 if denied else 400,
            reason=str(exc),
            duration_ms=(time.perf_counter() - t0) * 1000,
            client=user,
        )
        _append_quietly(settings, row)
        raise
    row = audit_row(
        LOCAL_ROLE,
        kind="sql",
        endpoint="clicklake sql",
        statement=sql,
        allowed=True,
        status=200,
        rows=table.num_rows,
        duration_ms=(time.perf_counter() - t0) * 1000,
        client=user,
    )
    _append_quietly(settings, row)
    return table


def _append_quietly(settings: Settings, row: dict[str, Any]) -> None:
    # A read-only data directory still answers the query; the missing audit row is logged loudly.
    try:
        append_audit(settings, [row])
    except ClickLakeError as exc:
        log.error("event=audit_append_failed endpoint=%r error=%r", row["endpoint"], str(exc))
