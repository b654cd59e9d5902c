"""Compaction, manifest rewrites, expiry, orphan removal and retention on real Iceberg tables
written by the real checkpointed sink."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.manifest import DataFile
from pyiceberg.table.snapshots import Operation

from clicklake.lakehouse.checkpoint import read_checkpoint
from clicklake.lakehouse.maintenance import (
    MAINTENANCE_KEY,
    MODELS_EVENTS_SNAPSHOT_KEY,
    RETENTION_CUTOFF_KEY,
    _commit_with_retries,
    _live_files,
    _strip_scheme,
    apply_retention,
    compact,
    expire,
    plan_compaction,
    referenced_files,
    remove_orphans,
    rewrite_manifests,
)
from clicklake.lakehouse.sink import TableSink
from tests.lakehouse.fixtures import DAY0, SmallFiles, event_rows, row_multiset


def _partitions(files: list) -> set[tuple]:  # type: ignore[type-arg]
    return {(f.spec_id, tuple(f.partition[i] for i in range(len(f.partition)))) for f in files}


def _exists(path: str) -> bool:
    return Path(_strip_scheme(path)).exists()


def _every_snapshot_reads_in_full(sf: SmallFiles) -> None:
    """Every remaining snapshot reads completely: its manifest list, manifests and data files exist."""
    table = sf.table()
    for snap in table.metadata.snapshots:
        assert _exists(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            assert _exists(manifest.manifest_path)
        for f in _live_files(table, snap):
            assert _exists(f.file_path), f.file_path
        rows = row_multiset(table, snap.snapshot_id)
        assert sum(rows.values()) == int(snap.summary["total-records"])  # type: ignore[index]


def test_compaction_replaces_small_files_one_snapshot_per_partition(
    small_files: Callable[..., SmallFiles],
) -> None:
    sf = small_files(batches=6, compact_commit_bytes=1)
    table = sf.table()
    before = row_multiset(table)
    files_before = _live_files(table)
    partitions = _partitions(files_before)
    assert len(files_before) == 6 * len(partitions)  # every commit wrote one file per partition
    checkpoint = read_checkpoint(table, "main")
    snapshots_before = len(table.metadata.snapshots)

    result = compact(table, sf.settings.maintenance)

    table = sf.table()
    assert row_multiset(table) == before
    files_after = _live_files(table)
    # The target (100 MB) holds each partition's files: one file per partition.
    assert len(files_after) == len(partitions) == result.files_added == result.groups
    assert _partitions(files_after) == partitions
    assert result.files_rewritten == len(files_before)
    assert result.bytes_added == sum(f.file_size_in_bytes for f in files_after)
    assert result.rows == sum(before.values())
    # The commits' small files had snappy on their dictionary columns; compacted files, which
    # stay, have the table's codec (zstd) on every column.
    assert {"SNAPPY", "ZSTD"} == _codecs(files_before[0])
    assert all(_codecs(f) == {"ZSTD"} for f in files_after)
    new = table.metadata.snapshots[snapshots_before:]
    assert len(new) == len(partitions)
    for snap in new:
        assert snap.summary is not None
        assert snap.summary.operation == Operation.REPLACE
        assert snap.summary[MAINTENANCE_KEY] == "compact"
        assert snap.summary["deleted-data-files"] == "6" and snap.summary["added-data-files"] == "1"
    # The checkpoint walk skips the replace snapshots: a restarted sink resumes where it was
    # and drops what the table already holds.
    assert read_checkpoint(table, "main") == checkpoint
    resumed = TableSink(table, "main", "test", "load_tstamp")
    assert resumed.checkpoint == {"s": 6 * 100_000}
    assert resumed.add(event_rows(3, 60, 3)) == 0
    # Nothing left to do.
    assert plan_compaction(table, sf.settings.maintenance) == []
    assert compact(table, sf.settings.maintenance).groups == 0


def _codecs(f: DataFile) -> set[str]:
    meta = pq.read_metadata(f.file_path.removeprefix("file://")).row_group(0)
    return {meta.column(i).compression for i in range(meta.num_columns)}


def test_target_size_splits_a_partition_by_real_file_sizes(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=8, buckets=1)
    table = sf.table()
    sizes = sorted(f.file_size_in_bytes for f in _live_files(table))
    # A target that holds about three input files: each day's 8 files go into 3 bins.
    target = sizes[-1] * 3 + 1
    opts = sf.settings.maintenance.model_copy(update={"target_file_bytes": target})
    before = row_multiset(table)
    plan = plan_compaction(table, opts)
    assert [len(bins) for bins in plan] == [3, 3, 3]
    assert all(sum(f.file_size_in_bytes for f in b) <= target for bins in plan for b in bins)
    snapshots = len(table.metadata.snapshots)
    result = compact(table, opts)
    assert result.files_added == 9
    assert row_multiset(sf.table()) == before
    # The three partitions (far below compact_commit_bytes) are replaced in one commit.
    assert result.groups == 1 and len(sf.table().metadata.snapshots) == snapshots + 1


def test_a_lost_race_is_retried_and_a_vanished_file_skips_the_group(
    small_files: Callable[..., SmallFiles],
) -> None:
    sf = small_files(batches=4)
    stale = sf.table()
    plan = plan_compaction(stale, sf.settings.maintenance)
    inputs = [f for b in plan[0] for f in b]
    # The pipeline commits after compaction read the table: the first attempt loses the race.
    sf.commit()
    expected = row_multiset(sf.table())
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.table import FileScanTask

    from clicklake.lakehouse.write import write_data_files

    df = ArrowScan(stale.metadata, stale.io, stale.schema(), AlwaysTrue()).to_table(
        [FileScanTask(f) for f in inputs]
    )
    new_files = write_data_files(stale, df, target_bytes=1 << 62)
    table, snapshot_id, conflicts = _commit_with_retries(
        stale, inputs, new_files, Operation.REPLACE, {MAINTENANCE_KEY: "compact"}, sf.settings.maintenance
    )
    assert snapshot_id is not None and conflicts == 1
    assert row_multiset(table) == expected
    # Committing the same rewrite again: its inputs are gone, so nothing happens.
    again = write_data_files(table, df, target_bytes=1 << 62)
    table, snapshot_id, _ = _commit_with_retries(
        table, inputs, again, Operation.REPLACE, {MAINTENANCE_KEY: "compact"}, sf.settings.maintenance
    )
    assert snapshot_id is None
    assert row_multiset(sf.table()) == expected


def test_manifests_are_merged_when_they_pile_up(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=7, manifest_merge_count=5)
    table = sf.table()
    before = row_multiset(table)
    assert len(table.current_snapshot().manifests(table.io)) == 7  # type: ignore[union-attr]
    table, snapshot_id = rewrite_manifests(table, sf.settings.maintenance)
    assert snapshot_id is not None
    assert len(table.current_snapshot().manifests(table.io)) == 1  # type: ignore[union-attr]
    assert row_multiset(table) == before
    assert read_checkpoint(table, "main") is not None
    # Below the threshold nothing is rewritten.
    assert rewrite_manifests(table, sf.settings.maintenance)[1] is None


def test_expire_keeps_the_checkpoint_lineage_and_deletes_only_unreferenced_files(
    small_files: Callable[..., SmallFiles],
) -> None:
    sf = small_files(batches=5)
    compact(sf.table(), sf.settings.maintenance)
    small = [f.file_path for f in _live_files(sf.table(), sf.table().metadata.snapshots[4])]
    checkpoint = read_checkpoint(sf.table(), "main")
    aggressive = sf.settings.maintenance.model_copy(
        update={"snapshot_max_age_hours": 0, "keep_last_snapshots": 1}
    )

    result = expire(sf.table(), aggressive)

    table = sf.table()
    # The newest checkpoint (batch 5's snapshot) and the replace snapshots above it stay; the
    # four older appends go. The small files are still read by the checkpoint snapshot.
    assert result.snapshots_expired == 4
    assert read_checkpoint(table, "main") == checkpoint
    assert all(_exists(p) for p in small)
    _every_snapshot_reads_in_full(sf)

    # Once the pipeline commits again, the checkpoint moves on and the small files can go.
    sf.commit()
    before = row_multiset(sf.table())
    result = expire(sf.table(), aggressive)
    assert result.data_files_deleted == len(small) and result.bytes_deleted > 0
    assert not any(_exists(p) for p in small)
    assert read_checkpoint(sf.table(), "main") is not None
    assert TableSink(sf.table(), "main", "test", "load_tstamp").checkpoint == {"s": 6 * 100_000}
    assert row_multiset(sf.table()) == before
    _every_snapshot_reads_in_full(sf)


def test_expire_keeps_what_model_tables_were_built_from(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=4)
    built_from = sf.table().metadata.snapshots[1].snapshot_id
    aggressive = sf.settings.maintenance.model_copy(
        update={"snapshot_max_age_hours": 0, "keep_last_snapshots": 1}
    )
    expire(sf.table(), aggressive, extra_protected=[built_from])
    ids = [s.snapshot_id for s in sf.table().metadata.snapshots]
    assert ids[0] == built_from and len(ids) == 3  # it and its descendants up to the current
    _every_snapshot_reads_in_full(sf)


def test_expire_respects_age_and_keep_last(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=4)
    opts = sf.settings.maintenance.model_copy(update={"snapshot_max_age_hours": 1, "keep_last_snapshots": 1})
    assert expire(sf.table(), opts).snapshots_expired == 0  # all younger than an hour
    later = datetime.now(UTC) + timedelta(hours=2)
    # Checkpoint snapshot = current here, so keep_last 1 leaves just it.
    assert expire(sf.table(), opts, now=later).snapshots_expired == 3
    _every_snapshot_reads_in_full(sf)


def test_orphans_older_than_the_safety_age_go_and_referenced_files_stay(
    small_files: Callable[..., SmallFiles],
) -> None:
    sf = small_files(batches=3)
    compact(sf.table(), sf.settings.maintenance)  # leaves replaced files referenced by old snapshots
    table = sf.table()
    data_dir = Path(_strip_scheme(table.metadata.location)) / "data"
    old = data_dir / "crashed-write-00000.parquet"
    young = data_dir / "in-flight-00001.parquet"
    for p in (old, young):
        p.write_bytes(b"PAR1 not really")
    two_days_ago = time.time() - 48 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    # Referenced files older than the safety age must survive too.
    for f in _live_files(table, table.metadata.snapshots[0]):
        os.utime(_strip_scheme(f.file_path), (two_days_ago, two_days_ago))
    opts = sf.settings.maintenance.model_copy(update={"orphan_min_age_hours": 24})

    dry = remove_orphans(table, opts, dry_run=True)
    assert dry.paths == [str(old)] and dry.orphans_removed == 0 and old.exists()

    result = remove_orphans(table, opts)
    assert result.orphans_removed == 1 and result.too_young == 1
    assert not old.exists() and young.exists()
    assert all(Path(p).exists() for p in referenced_files(sf.table()))
    _every_snapshot_reads_in_full(sf)


def test_retention_drops_exactly_the_partitions_older_than_the_limit(
    small_files: Callable[..., SmallFiles],
) -> None:
    sf = small_files(batches=2)
    for _ in range(2):
        sf.sink.add(event_rows(sf.batches, 100, days=6))
        sf.batches += 1
        sf.sink.commit({"s": sf.batches * 100_000})
    table = sf.table()
    rows = table.scan().to_arrow()
    days = pa.compute.cast(rows.column("derived_tstamp"), pa.date32()).to_pylist()
    checkpoint = read_checkpoint(table, "main")
    today = DAY0 + timedelta(days=6)  # events on DAY0 .. DAY0+5

    result = apply_retention(table, 3, sf.settings.maintenance, today=today)

    keep_from = today - timedelta(days=3)
    assert result.keep_from == keep_from
    table = sf.table()
    left = table.scan().to_arrow()
    left_days = pa.compute.cast(left.column("derived_tstamp"), pa.date32()).to_pylist()
    assert sorted(set(left_days)) == [keep_from + timedelta(days=i) for i in range(3)]
    assert left.num_rows == sum(1 for d in days if d >= keep_from)
    assert result.rows_deleted == sum(1 for d in days if d < keep_from)
    assert result.partitions_dropped == 3 * 2  # 3 days x 2 buckets
    snap = table.current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary.operation == Operation.DELETE
    assert snap.summary[RETENTION_CUTOFF_KEY] == str((keep_from - date(1970, 1, 1)).days)
    assert read_checkpoint(table, "main") == checkpoint
    # 0 keeps everything; a second run has nothing left to drop.
    assert apply_retention(table, 0, sf.settings.maintenance, today=today).files_deleted == 0
    assert apply_retention(table, 3, sf.settings.maintenance, today=today).files_deleted == 0


def test_model_tables_keep_their_build_marker_through_maintenance(settings: object, tmp_path: Path) -> None:
    from pyiceberg.schema import Schema
    from pyiceberg.types import DateType, LongType, NestedField

    from clicklake.config import load_settings
    from clicklake.lakehouse.catalog import open_catalog

    s = load_settings(
        environ={}, storage={"data_dir": str(tmp_path / "m")}, maintenance={"min_input_files": 2}
    )
    catalog = open_catalog(s)
    catalog.create_namespace_if_not_exists("clicklake")
    table = catalog.create_table(
        "clicklake.daily_kpis",
        Schema(
            NestedField(1, "date", DateType(), required=False),
            NestedField(2, "n", LongType(), required=False),
        ),
    )
    with table.update_spec() as spec:
        spec.add_identity("date")
    for i in range(3):
        df = pa.table(
            {"date": pa.array([DAY0 + timedelta(days=d) for d in range(4)], pa.date32()), "n": [i] * 4}
        )
        table.append(df, snapshot_properties={MODELS_EVENTS_SNAPSHOT_KEY: str(100 + i)})
    compact(table, s.maintenance)
    result = apply_retention(table, 2, s.maintenance, today=DAY0 + timedelta(days=4))
    table = table.refresh()
    assert result.partitions_dropped == 2
    assert sorted(set(table.scan().to_arrow().column("date").to_pylist())) == [
        DAY0 + timedelta(days=2),
        DAY0 + timedelta(days=3),
    ]
    assert table.current_snapshot().summary[MODELS_EVENTS_SNAPSHOT_KEY] == "102"  # type: ignore[union-attr]


@pytest.mark.parametrize("action", ["compact", "expire", "orphans", "retention"])
def test_cli_maintain_runs_over_the_tables(small_files: Callable[..., SmallFiles], action: str) -> None:
    from click.testing import CliRunner

    from clicklake.cli import cli

    sf = small_files(batches=3)
    before = row_multiset(sf.table())
    res = CliRunner().invoke(
        cli,
        ["--data-dir", str(sf.settings.storage.data_dir), "maintain", action],
        env={"CLICKLAKE_MAINTENANCE__MIN_INPUT_FILES": "2"},
    )
    assert res.exit_code == 0, res.output
    assert "events" in res.output and "failed_events" in res.output
    assert row_multiset(sf.table()) == before
    bad = CliRunner().invoke(
        cli, ["--data-dir", str(sf.settings.storage.data_dir), "maintain", action, "--table", "nope"]
    )
    assert bad.exit_code == 2 and "unknown table 'nope'" in bad.output
    if action == "compact":
        assert len(_live_files(sf.table())) == len(_partitions(_live_files(sf.table())))


def test_compact_and_expire_race_a_committing_writer(small_files: Callable[..., SmallFiles]) -> None:
    """A writer thread commits while compaction and aggressive expiry run in a loop: no row is
    lost or doubled, the checkpoint is the writer's last, every remaining snapshot reads."""
    import threading

    sf = small_files(batches=2)
    opts = sf.settings.maintenance.model_copy(
        update={"snapshot_max_age_hours": 0, "keep_last_snapshots": 1, "commit_retries": 50}
    )
    writer = SmallFiles(
        sf.settings, TableSink(sf.table(), "main", "test", "load_tstamp", retries=50), sf.batches
    )
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(12):
                writer.commit(n=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    rounds = 0
    while thread.is_alive() or rounds < 2:
        compact(sf.table(), opts)
        expire(sf.table(), opts)
        rounds += 1
    thread.join()
    assert not errors, errors
    table = sf.table()
    rows = row_multiset(table)
    assert sum(rows.values()) == len(rows) == 2 * 60 + 12 * 30
    assert read_checkpoint(table, "main").positions == {"s": 14 * 100_000}  # type: ignore[union-attr]
    _every_snapshot_reads_in_full(sf)
