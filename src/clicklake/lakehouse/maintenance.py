"""Table maintenance: compaction, manifest rewrites, snapshot expiry, orphan files, retention.

PyIceberg has no rewrite action, so compaction is built from its snapshot producer: the small
data files of a partition are read (through the table's own schema projection, so files of
older schemas read with nulls), written again as target-size Parquet files, and committed as
**one ``replace`` snapshot per group of partitions** (up to ``maintenance.compact_commit_bytes``
of input; 1 gives one per partition) that deletes exactly those files and adds the new ones.
The pipeline only appends, so a lost race is retried on the refreshed table (the same new
files committed again); if an input file is gone meanwhile (another compaction, retention) the
group is skipped and its new files deleted. Rows are never lost nor doubled: a snapshot
either swaps the whole set or nothing.

The pipeline's exactly-once checkpoint lives in the summaries of its own snapshots, and the
checkpoint walk (:func:`clicklake.lakehouse.checkpoint.read_checkpoint`) follows parents from
the current snapshot, skipping snapshots of other writers. Maintenance snapshots carry only
``clicklake.maintenance`` (what they did); expiry keeps, for every pipeline id, the newest
snapshot holding its checkpoint *and every ancestor between it and the current snapshot*, so
the walk still reaches it; and it keeps the ``events`` snapshots the model tables record as
built (``clicklake.models.events_snapshot``), so incremental model builds stay incremental.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
from pyarrow.fs import FileSelector, FileSystem, FileType
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestFile
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.table.snapshots import Operation, Snapshot, Summary
from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.typedef import EMPTY_DICT
from pyiceberg.types import DateType
from pyiceberg.utils.properties import property_as_int
from sqlalchemy.exc import SQLAlchemyError

from clicklake.config import MaintenanceSettings, Settings
from clicklake.exceptions import ClickLakeError
from clicklake.lakehouse.checkpoint import CHECKPOINT_KEY, PIPELINE_KEY
from clicklake.lakehouse.write import write_data_files

log = logging.getLogger("clicklake.maintenance")

MAINTENANCE_KEY = "clicklake.maintenance"
MAINTENANCE_ID_KEY = "clicklake.maintenance.commit-id"
#: Retention snapshots record the first day they kept (days since 1970-01-01, UTC).
RETENTION_CUTOFF_KEY = "clicklake.retention.keep-from-day"
#: Written by the model runner into model tables: the ``events`` snapshot they were built from.
MODELS_EVENTS_SNAPSHOT_KEY = "clicklake.models.events_snapshot"

Progress = Callable[[int], None]
_NO_SPLIT = 1 << 62
_EPOCH = date(1970, 1, 1)


class _RewriteFiles(_OverwriteFiles):
    """An overwrite producer whose snapshot is a ``replace`` (or ``delete``) operation.

    ``_OverwriteFiles`` deletes exactly the files given to ``delete_data_file`` (refusing, with
    ``ValidationException``, files no longer in the parent) and adds the appended ones. PyIceberg's
    summary code only knows append/overwrite/delete, so the totals are computed as an overwrite
    and the operation is set afterwards. Manifests are merged (as a merge append does) when a
    snapshot would carry more than ``merge_count`` of them.
    """

    merge_count = 100

    def written_manifests(self) -> list[str]:
        return list(self._written_manifests)

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        operation = self._operation
        self._operation = Operation.OVERWRITE if operation == Operation.REPLACE else operation
        try:
            summary = super()._summary(snapshot_properties)
        finally:
            self._operation = operation
        return Summary(operation=operation, **summary.additional_properties)

    def _process_manifests(self, manifests: list[ManifestFile]) -> list[ManifestFile]:
        data = [m for m in manifests if m.content == ManifestContent.DATA]
        deletes = [m for m in manifests if m.content == ManifestContent.DELETES]
        if len(data) < self.merge_count:
            return manifests
        target = property_as_int(
            self._transaction.table_metadata.properties,
            TableProperties.MANIFEST_TARGET_SIZE_BYTES,
            TableProperties.MANIFEST_TARGET_SIZE_BYTES_DEFAULT,
        )
        assert target is not None
        merger = _ManifestMergeManager(
            target_size_bytes=target, min_count_to_merge=2, merge_enabled=True, snapshot_producer=self
        )
        return merger.merge_manifests(data) + deletes


# -- results --------------------------------------------------------------------------------


@dataclass
class CompactResult:
    """What one compaction run did to one table."""

    table: str
    groups: int = 0
    files_rewritten: int = 0
    files_added: int = 0
    bytes_rewritten: int = 0
    bytes_added: int = 0
    rows: int = 0
    skipped_groups: int = 0
    conflicts: int = 0
    manifests_before: int = 0
    manifests_after: int = 0
    seconds: float = 0.0
    snapshots: list[int] = field(default_factory=list)


@dataclass
class ExpireResult:
    """What one expiry run did to one table."""

    table: str
    snapshots_expired: int = 0
    snapshots_kept: int = 0
    data_files_deleted: int = 0
    manifests_deleted: int = 0
    manifest_lists_deleted: int = 0
    bytes_deleted: int = 0
    seconds: float = 0.0


@dataclass
class OrphanResult:
    """What one orphan-file run did to one table."""

    table: str
    files_scanned: int = 0
    orphans_removed: int = 0
    bytes_removed: int = 0
    too_young: int = 0
    paths: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RetentionResult:
    """What one retention run did to one table."""

    table: str
    keep_from: date | None = None
    partitions_dropped: int = 0
    files_deleted: int = 0
    rows_deleted: int = 0
    snapshot_id: int | None = None
    seconds: float = 0.0


# -- helpers --------------------------------------------------------------------------------


def _name(table: Table) -> str:
    return ".".join(table.name())


def _live_files(table: Table, snapshot: Snapshot | None = None) -> list[DataFile]:
    """Every live (data and delete) file of ``snapshot`` (default: the current one)."""
    snap = snapshot or table.current_snapshot()
    if snap is None:
        return []
    out = []
    for manifest in snap.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            out.append(entry.data_file)
    return out


def _partition_values(f: DataFile) -> tuple[Any, ...]:
    return tuple(f.partition[i] for i in range(len(f.partition)))


def ancestors(table: Table) -> list[Snapshot]:
    """The current snapshot and its ancestors, newest first (as the checkpoint walk sees them)."""
    meta = table.metadata
    by_id = {s.snapshot_id: s for s in meta.snapshots}
    out = []
    sid = meta.current_snapshot_id
    while sid is not None and sid in by_id:
        out.append(by_id[sid])
        sid = by_id[sid].parent_snapshot_id
    return out


def _strip_scheme(uri: str) -> str:
    """A path comparable with what ``pyarrow.fs`` lists (``file:///x`` -> ``/x``, ``s3://b/k`` -> ``b/k``)."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    return rest if scheme != "file" else "/" + rest.lstrip("/")


def _delete_paths(table: Table, paths: Iterable[str]) -> int:
    n = 0
    for path in paths:
        try:
            table.io.delete(path)
            n += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("event=delete_failed table=%s path=%s error=%r", _name(table), path, str(exc)[:200])
    return n


def _commit_rewrite(
    table: Table,
    deleted: list[DataFile],
    added: list[DataFile],
    operation: Operation,
    props: dict[str, str],
    merge_count: int,
) -> None:
    current = table.current_snapshot()
    carried = current.summary.additional_properties if current and current.summary else {}
    if MODELS_EVENTS_SNAPSHOT_KEY in carried:
        # The model runner reads what a model table was built from in its current snapshot.
        props = {**props, MODELS_EVENTS_SNAPSHOT_KEY: carried[MODELS_EVENTS_SNAPSHOT_KEY]}
    txn = table.transaction()
    producer = _RewriteFiles(operation=operation, transaction=txn, io=table.io, snapshot_properties=props)
    producer.merge_count = merge_count
    for f in deleted:
        producer.delete_data_file(f)
    for f in added:
        producer.append_data_file(f)
    producer.commit()
    committed = txn.commit_transaction()
    snap = committed.metadata.snapshot_by_id(producer.snapshot_id)
    if snap is not None:
        # Manifests merged away before the commit were never referenced by any snapshot.
        used = {m.manifest_path for m in snap.manifests(table.io)}
        _delete_paths(table, [p for p in producer.written_manifests() if p not in used])


def _commit_with_retries(
    table: Table,
    deleted: list[DataFile],
    added: list[DataFile],
    operation: Operation,
    props: dict[str, str],
    opts: MaintenanceSettings,
) -> tuple[Table, int | None, int]:
    """Commit one rewrite, retrying lost races on the refreshed table.

    Returns:
        ``(table, snapshot id or None when skipped, conflicts)``. Skipped means an input file
        is no longer live (someone else removed it): nothing was committed.
    """
    commit_id = str(uuid.uuid4())
    props = {**props, MAINTENANCE_ID_KEY: commit_id}
    conflicts = 0
    while True:
        try:
            _commit_rewrite(table, deleted, added, operation, props, opts.manifest_merge_count)
            table = table.refresh()
            return table, _find_maintenance_commit(table, commit_id), conflicts
        except ValidationException as exc:
            log.info("event=rewrite_skipped table=%s reason=%r", _name(table), str(exc)[:200])
            return table.refresh(), None, conflicts
        except CommitFailedException as exc:
            err: Exception = exc
        except (SQLAlchemyError, OSError) as exc:
            err = exc
            table = table.refresh()
            found = _find_maintenance_commit(table, commit_id)
            if found is not None:
                return table, found, conflicts
        conflicts += 1
        if conflicts > opts.commit_retries:
            log.warning(
                "event=rewrite_gave_up table=%s conflicts=%d error=%r", _name(table), conflicts, str(err)
            )
            return table.refresh(), None, conflicts
        delay = min(5.0, 0.05 * 2**conflicts) * (0.5 + random.random())
        log.info("event=rewrite_retry table=%s attempt=%d delay_s=%.2f", _name(table), conflicts, delay)
        time.sleep(delay)
        table = table.refresh()


def _find_maintenance_commit(table: Table, commit_id: str) -> int | None:
    for snap in ancestors(table)[:50]:
        if (
            snap.summary is not None
            and snap.summary.additional_properties.get(MAINTENANCE_ID_KEY) == commit_id
        ):
            return int(snap.snapshot_id)
    return None


# -- compaction -----------------------------------------------------------------------------


def _bins(files: list[DataFile], target: int) -> list[list[DataFile]]:
    """First-fit decreasing by real file size into bins of at most ``target`` bytes."""
    bins: list[tuple[int, list[DataFile]]] = []
    for f in sorted(files, key=lambda f: (-f.file_size_in_bytes, f.file_path)):
        for i, (size, members) in enumerate(bins):
            if size + f.file_size_in_bytes <= target:
                members.append(f)
                bins[i] = (size + f.file_size_in_bytes, members)
                break
        else:
            bins.append((f.file_size_in_bytes, [f]))
    return [members for _, members in bins]


def plan_compaction(table: Table, opts: MaintenanceSettings) -> list[list[list[DataFile]]]:
    """The partition groups to compact, each as its bins (each bin becomes one new file).

    A group is one partition of one spec with at least ``min_input_files`` files smaller than
    ``small_file_bytes`` (real Parquet sizes from the manifests) and no delete files; bins of
    a single file are left alone.
    """
    groups: dict[tuple[int, tuple[Any, ...]], list[DataFile]] = defaultdict(list)
    has_deletes: set[tuple[int, tuple[Any, ...]]] = set()
    for f in _live_files(table):
        key: tuple[int, tuple[Any, ...]] = (f.spec_id, _partition_values(f))
        if f.content != DataFileContent.DATA:
            has_deletes.add(key)
        elif f.file_size_in_bytes < opts.small_file_bytes:
            groups[key].append(f)
    plan = []
    for key in sorted(groups, key=repr):
        files = groups[key]
        if key in has_deletes or len(files) < opts.min_input_files:
            continue
        bins = [b for b in _bins(files, opts.target_file_bytes) if len(b) > 1]
        if bins:
            plan.append(bins)
    return plan


def _prefetched_bins(
    scan: ArrowScan, bins: list[list[DataFile]]
) -> Iterator[tuple[list[DataFile], pa.Table]]:
    """Each bin with its rows, the next bin read on a second thread while the caller writes
    this one (Parquet decoding and encoding both release the GIL)."""
    if not bins:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicklake-compact-read") as pool:
        ahead = pool.submit(scan.to_table, [FileScanTask(f) for f in bins[0]])
        for i, b in enumerate(bins):
            df = ahead.result()
            if i + 1 < len(bins):
                ahead = pool.submit(scan.to_table, [FileScanTask(f) for f in bins[i + 1]])
            yield b, df
            del df


def _commit_groups(plan: list[list[list[DataFile]]], limit: int) -> list[list[list[DataFile]]]:
    """Partitions' bins grouped into commits of about ``limit`` input bytes (whole partitions)."""
    out: list[list[list[DataFile]]] = []
    current: list[list[DataFile]] = []
    size = 0
    for bins in plan:
        current.extend(bins)
        size += sum(f.file_size_in_bytes for b in bins for f in b)
        if size >= limit:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def compact(table: Table, opts: MaintenanceSettings, progress: Progress | None = None) -> CompactResult:
    """Compact the small files of ``table``: one ``replace`` snapshot per group of partitions.

    Whole partitions are grouped into one commit up to ``compact_commit_bytes`` of input (one
    per partition when that is 1): fewer commits cost less (each rewrites the manifests that
    list replaced files), smaller ones lose less work to a conflict.

    Args:
        table: The table (refreshed first).
        opts: ``[maintenance]`` settings (``small_file_bytes``, ``target_file_bytes``,
            ``min_input_files``, ``compact_commit_bytes``, ``manifest_merge_count``,
            ``commit_retries``).
        progress: Called with the bytes of input files done after each new file.

    Returns:
        What was rewritten; groups skipped because of conflicts are counted, not raised.
    """
    t0 = time.monotonic()
    table = table.refresh()
    result = CompactResult(_name(table))
    result.manifests_before = _manifest_count(table)
    meta = table.metadata
    for bins in _commit_groups(plan_compaction(table, opts), opts.compact_commit_bytes):
        inputs = [f for b in bins for f in b]
        new_files: list[DataFile] = []
        rows = 0
        scan = ArrowScan(meta, table.io, meta.schema(), AlwaysTrue())
        try:
            for b, df in _prefetched_bins(scan, bins):
                rows += df.num_rows
                # One bin, one file per partition of the current spec (an older spec's group
                # is split by the current one: compaction also migrates partition specs).
                new_files.extend(write_data_files(table, df, target_bytes=_NO_SPLIT, small_files=False))
                del df
                if progress:
                    progress(sum(f.file_size_in_bytes for f in b))
        except FileNotFoundError:
            # An input file vanished (another maintenance run): skip the group.
            _delete_paths(table, [f.file_path for f in new_files])
            result.skipped_groups += 1
            table = table.refresh()
            meta = table.metadata
            continue
        if rows != sum(f.record_count for f in inputs):
            # Never commit a rewrite that does not hold exactly the rows it replaces.
            _delete_paths(table, [f.file_path for f in new_files])
            raise ClickLakeError(
                f"compaction of {result.table} read {rows} rows from files whose manifests list "
                f"{sum(f.record_count for f in inputs)}; nothing was committed"
            )
        props = {
            MAINTENANCE_KEY: "compact",
            "clicklake.compact.files-rewritten": str(len(inputs)),
            "clicklake.compact.bytes-rewritten": str(sum(f.file_size_in_bytes for f in inputs)),
        }
        table, snapshot_id, conflicts = _commit_with_retries(
            table, inputs, new_files, Operation.REPLACE, props, opts
        )
        meta = table.metadata
        result.conflicts += conflicts
        if snapshot_id is None:
            _delete_paths(table, [f.file_path for f in new_files])
            result.skipped_groups += 1
        else:
            result.groups += 1
            result.snapshots.append(snapshot_id)
            result.files_rewritten += len(inputs)
            result.files_added += len(new_files)
            result.bytes_rewritten += sum(f.file_size_in_bytes for f in inputs)
            result.bytes_added += sum(f.file_size_in_bytes for f in new_files)
            result.rows += rows
            log.info(
                "event=compacted table=%s snapshot=%s files_in=%d files_out=%d bytes_in=%d bytes_out=%d rows=%d",
                result.table,
                snapshot_id,
                len(inputs),
                len(new_files),
                sum(f.file_size_in_bytes for f in inputs),
                sum(f.file_size_in_bytes for f in new_files),
                rows,
            )
    table, merged = rewrite_manifests(table, opts)
    if merged is not None:
        result.snapshots.append(merged)
    result.manifests_after = _manifest_count(table)
    result.seconds = time.monotonic() - t0
    return result


def _manifest_count(table: Table) -> int:
    snap = table.current_snapshot()
    return len(snap.manifests(table.io)) if snap else 0


def rewrite_manifests(table: Table, opts: MaintenanceSettings) -> tuple[Table, int | None]:
    """Merge the current snapshot's manifests when there are ``manifest_merge_count`` or more.

    Returns:
        ``(table, the new snapshot id or None when nothing was due)``.
    """
    table = table.refresh()
    if _manifest_count(table) < opts.manifest_merge_count:
        return table, None
    table, snapshot_id, _ = _commit_with_retries(
        table, [], [], Operation.REPLACE, {MAINTENANCE_KEY: "rewrite_manifests"}, opts
    )
    log.info("event=manifests_rewritten table=%s snapshot=%s", _name(table), snapshot_id)
    return table, snapshot_id


# -- snapshot expiry ------------------------------------------------------------------------


def protected_snapshots(
    table: Table, opts: MaintenanceSettings, now: datetime | None = None, extra: Iterable[int] = ()
) -> set[int]:
    """Snapshots expiry keeps.

    The current one, the last ``keep_last_snapshots`` of the current lineage, every snapshot
    younger than ``snapshot_max_age_hours``, the newest checkpoint of every pipeline id (and
    the lineage from the current snapshot down to it, which the checkpoint walk follows), and
    ``extra`` snapshots (with their lineage as well): the ones model tables were built from.
    """
    now = now or datetime.now(UTC)
    meta = table.metadata
    chain = ancestors(table)
    keep: set[int] = {s.snapshot_id for s in chain[: opts.keep_last_snapshots]}
    cutoff_ms = int((now - timedelta(hours=opts.snapshot_max_age_hours)).timestamp() * 1000)
    keep |= {s.snapshot_id for s in meta.snapshots if s.timestamp_ms >= cutoff_ms}
    keep |= {ref.snapshot_id for ref in meta.refs.values()}
    needed: set[int] = set(extra)
    seen_pipelines: set[str] = set()
    for snap in chain:
        props = snap.summary.additional_properties if snap.summary else {}
        pid = props.get(PIPELINE_KEY)
        if pid is not None and CHECKPOINT_KEY in props and pid not in seen_pipelines:
            seen_pipelines.add(pid)
            needed.add(snap.snapshot_id)
    ids = [s.snapshot_id for s in chain]
    deepest = max((ids.index(s) for s in needed if s in ids), default=-1)
    keep |= set(ids[: deepest + 1])
    keep |= {s for s in needed if meta.snapshot_by_id(s) is not None}
    return keep


def _files_of(
    table: Table, snapshots: Iterable[Snapshot], live_only: bool
) -> tuple[set[str], set[str], dict[str, int]]:
    """``(manifest lists + manifests, data/delete files, size by file)`` of ``snapshots``."""
    meta_files: set[str] = set()
    data: set[str] = set()
    sizes: dict[str, int] = {}
    seen_manifests: set[str] = set()
    for snap in snapshots:
        meta_files.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            meta_files.add(manifest.manifest_path)
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
                data.add(entry.data_file.file_path)
                sizes[entry.data_file.file_path] = entry.data_file.file_size_in_bytes
    return meta_files, data, sizes


def expire(
    table: Table,
    opts: MaintenanceSettings,
    extra_protected: Iterable[int] = (),
    now: datetime | None = None,
    progress: Progress | None = None,
) -> ExpireResult:
    """Expire unprotected snapshots older than ``snapshot_max_age_hours``, then delete the data
    files, manifests and manifest lists that no remaining snapshot references.

    Args:
        table: The table.
        opts: ``[maintenance]`` settings.
        extra_protected: Snapshot ids to keep with their lineage (see :func:`protected_snapshots`).
        now: The time to measure ages against (default: now).
        progress: Called with the number of files deleted.

    Returns:
        What was expired and deleted.
    """
    t0 = time.monotonic()
    table = table.refresh()
    result = ExpireResult(_name(table))
    attempt = 0
    while True:
        keep = protected_snapshots(table, opts, now, extra_protected)
        doomed = [s for s in table.metadata.snapshots if s.snapshot_id not in keep]
        result.snapshots_kept = len(table.metadata.snapshots) - len(doomed)
        if not doomed:
            result.seconds = time.monotonic() - t0
            return result
        try:
            table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in doomed]).commit()
            break
        except CommitFailedException:
            # A writer committed meanwhile: decide again on the refreshed table.
            attempt += 1
            if attempt > opts.commit_retries:
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            table = table.refresh()
    doomed_meta, doomed_data, sizes = _files_of(table, doomed, live_only=False)
    table = table.refresh()
    remaining = table.metadata.snapshots
    kept_meta, kept_data, _ = _files_of(table, remaining, live_only=True)
    # Deleted-status entries of remaining manifests name files no remaining snapshot reads.
    gone_data = sorted(doomed_data - kept_data)
    gone_meta = sorted(doomed_meta - kept_meta)
    result.snapshots_expired = len(doomed)
    result.data_files_deleted = _delete_paths(table, gone_data)
    result.bytes_deleted = sum(sizes.get(p, 0) for p in gone_data)
    lists = {s.manifest_list for s in doomed}
    result.manifest_lists_deleted = _delete_paths(table, [p for p in gone_meta if p in lists])
    result.manifests_deleted = _delete_paths(table, [p for p in gone_meta if p not in lists])
    if progress:
        progress(len(gone_data) + len(gone_meta))
    log.info(
        "event=snapshots_expired table=%s expired=%d kept=%d data_files_deleted=%d manifests_deleted=%d bytes=%d",
        result.table,
        result.snapshots_expired,
        result.snapshots_kept,
        result.data_files_deleted,
        result.manifests_deleted + result.manifest_lists_deleted,
        result.bytes_deleted,
    )
    result.seconds = time.monotonic() - t0
    return result


# -- orphan files ---------------------------------------------------------------------------


def referenced_files(table: Table) -> set[str]:
    """Every file any snapshot or the metadata references, scheme stripped."""
    meta = table.metadata
    meta_files, data, _ = _files_of(table, meta.snapshots, live_only=False)
    refs = meta_files | data
    refs.add(table.metadata_location)
    refs |= {entry.metadata_file for entry in meta.metadata_log}
    refs |= {s.statistics_path for s in meta.statistics}
    refs |= {s.statistics_path for s in meta.partition_statistics}
    return {_strip_scheme(p) for p in refs}


def _listing(location: str) -> Iterator[tuple[str, float, int]]:
    fs, root = FileSystem.from_uri(location)
    for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == FileType.File:
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            yield info.path, mtime, int(info.size or 0)


def remove_orphans(
    table: Table,
    opts: MaintenanceSettings,
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> OrphanResult:
    """Delete files under the table location that nothing references and that are older than
    ``orphan_min_age_hours`` (younger ones may belong to a commit in flight).

    Args:
        table: The table.
        opts: ``[maintenance]`` settings.
        now: The time to measure ages against (default: now).
        dry_run: Only list them (in ``paths``).
        progress: Called with the number of files scanned.

    Returns:
        What was found and removed.
    """
    t0 = time.monotonic()
    table = table.refresh()
    result = OrphanResult(_name(table))
    # Listed first, then references read: a file committed in between is both listed and
    # referenced; a file written after the listing is not looked at.
    listing = list(_listing(table.metadata.location))
    refs = referenced_files(table.refresh())
    cutoff = (now or datetime.now(UTC)).timestamp() - opts.orphan_min_age_hours * 3600
    fs, _ = FileSystem.from_uri(table.metadata.location)
    for path, mtime, size in listing:
        result.files_scanned += 1
        if path in refs:
            continue
        if mtime > cutoff:
            result.too_young += 1
            continue
        result.paths.append(path)
        if not dry_run:
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                continue
            result.orphans_removed += 1
            result.bytes_removed += size
    if progress:
        progress(result.files_scanned)
    log.info(
        "event=orphans table=%s scanned=%d removed=%d bytes=%d too_young=%d dry_run=%s",
        result.table,
        result.files_scanned,
        result.orphans_removed,
        result.bytes_removed,
        result.too_young,
        dry_run,
    )
    result.seconds = time.monotonic() - t0
    return result


# -- retention ------------------------------------------------------------------------------


def _day_field_index(table: Table, spec_id: int) -> int | None:
    """Index of the partition field giving a file's day: ``day(ts)`` or ``identity(date)``."""
    spec = table.metadata.specs()[spec_id]
    schema = table.schema()
    for i, pf in enumerate(spec.fields):
        if isinstance(pf.transform, DayTransform):
            return i
        if isinstance(pf.transform, IdentityTransform):
            src = schema.find_field(pf.source_id)
            if isinstance(src.field_type, DateType):
                return i
    return None


def _as_day(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, date):
        return (value - _EPOCH).days
    return None


def apply_retention(
    table: Table, days: int, opts: MaintenanceSettings, today: date | None = None
) -> RetentionResult:
    """Drop whole day partitions older than ``days`` (strictly before ``today - days``, UTC).

    Only whole data files are removed, never rewritten: a file's day is its partition value
    (``day(...)`` or an identity ``date`` column); files of specs without one are kept. The
    snapshot is a ``delete`` recording the first day kept (``clicklake.retention.keep-from-day``).

    Args:
        table: The table.
        days: Days to keep; 0 keeps everything.
        opts: ``[maintenance]`` settings (``commit_retries``).
        today: The reference day (default: today, UTC).

    Returns:
        What was dropped.
    """
    t0 = time.monotonic()
    table = table.refresh()
    result = RetentionResult(_name(table))
    if days <= 0:
        return result
    keep_from = (today or datetime.now(UTC).date()) - timedelta(days=days)
    result.keep_from = keep_from
    cutoff = (keep_from - _EPOCH).days
    doomed: list[DataFile] = []
    partitions: set[tuple[int, tuple[Any, ...]]] = set()
    for f in _live_files(table):
        index = _day_field_index(table, f.spec_id)
        if index is None:
            continue
        day = _as_day(f.partition[index])
        if day is not None and day < cutoff:
            doomed.append(f)
            partitions.add((f.spec_id, _partition_values(f)))
    if doomed:
        props = {MAINTENANCE_KEY: "retention", RETENTION_CUTOFF_KEY: str(cutoff)}
        table, snapshot_id, _ = _commit_with_retries(table, doomed, [], Operation.DELETE, props, opts)
        if snapshot_id is not None:
            result.snapshot_id = snapshot_id
            result.partitions_dropped = len(partitions)
            result.files_deleted = len(doomed)
            result.rows_deleted = sum(f.record_count for f in doomed)
    log.info(
        "event=retention table=%s keep_from=%s partitions=%d files=%d rows=%d snapshot=%s",
        result.table,
        keep_from,
        result.partitions_dropped,
        result.files_deleted,
        result.rows_deleted,
        result.snapshot_id,
    )
    result.seconds = time.monotonic() - t0
    return result


# -- over the clicklake tables --------------------------------------------------------------

#: The tables maintenance looks after, in order, and which retention setting applies.
MODEL_TABLE_NAMES = ("page_views", "sessions", "user_mapping", "users", "daily_kpis")
ACTIONS = ("compact", "expire", "orphans", "retention")


def _tables(settings: Settings, names: Iterable[str] | None = None) -> list[tuple[str, Table]]:
    from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, load_existing, open_catalog

    catalog = open_catalog(settings, write=False)
    wanted = list(names) if names else [EVENTS, FAILED_EVENTS, *MODEL_TABLE_NAMES]
    out = []
    for name in wanted:
        table = load_existing(catalog, settings, name)
        if table is not None:
            out.append((name, table))
    return out


def retention_days(settings: Settings, name: str) -> int:
    """The retention setting that applies to table ``name`` (0: keep everything)."""
    m = settings.maintenance
    if name == "events":
        return m.retention_events_days
    if name == "failed_events":
        return m.retention_failed_events_days
    return m.retention_models_days


def model_built_from(settings: Settings) -> set[int]:
    """The ``events`` snapshots model tables were built from (expiry keeps them)."""
    out: set[int] = set()
    for _, table in _tables(settings, MODEL_TABLE_NAMES):
        for snap in ancestors(table)[:1]:
            raw = snap.summary.additional_properties.get(MODELS_EVENTS_SNAPSHOT_KEY) if snap.summary else None
            if raw and int(raw) >= 0:
                out.add(int(raw))
    return out


def input_bytes(settings: Settings, action: str, names: Iterable[str] | None = None) -> int:
    """Bytes of small files compaction would read (for a progress bar); 0 for other actions."""
    if action != "compact":
        return 0
    total = 0
    for _, table in _tables(settings, names):
        total += sum(
            f.file_size_in_bytes
            for bins in plan_compaction(table, settings.maintenance)
            for b in bins
            for f in b
        )
    return total


def run_action(
    settings: Settings,
    action: str,
    names: Iterable[str] | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[CompactResult | ExpireResult | OrphanResult | RetentionResult]:
    """Run one maintenance action over the clicklake tables that exist.

    Args:
        settings: The settings (``[maintenance]`` and the catalog).
        action: ``compact``, ``expire``, ``orphans`` or ``retention``.
        names: Only these tables (default: events, failed_events and the model tables).
        dry_run: ``orphans`` only: list, do not delete.
        progress: Called with units done (bytes for compact, files otherwise).

    Returns:
        One result per table.

    Raises:
        InputError: An unknown action or table name.
    """
    from clicklake.exceptions import InputError

    if action not in ACTIONS:
        raise InputError(f"unknown maintenance action {action!r}; use one of {', '.join(ACTIONS)}")
    known = ("events", "failed_events", *MODEL_TABLE_NAMES)
    for name in names or ():
        if name not in known:
            raise InputError(f"unknown table {name!r}; use one of {', '.join(known)}")
    opts = settings.maintenance
    results: list[CompactResult | ExpireResult | OrphanResult | RetentionResult] = []
    for name, table in _tables(settings, names):
        if action == "compact":
            results.append(compact(table, opts, progress))
        elif action == "expire":
            extra = model_built_from(settings) if name == "events" else set()
            results.append(expire(table, opts, extra, progress=progress))
        elif action == "orphans":
            results.append(remove_orphans(table, opts, dry_run=dry_run, progress=progress))
        else:
            results.append(apply_retention(table, retention_days(settings, name), opts))
            if progress:
                progress(1)
    return results
