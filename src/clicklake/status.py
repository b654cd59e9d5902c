"""What `clicklake status` reports: tables, rows, snapshots, checkpoints, spool lag."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from clicklake.config import Settings
from clicklake.lakehouse.catalog import load_existing, open_catalog
from clicklake.lakehouse.checkpoint import CHECKPOINT_KEY, PIPELINE_KEY
from clicklake.query.engine import ALL_TABLES
from clicklake.sources.base import min_position
from clicklake.sources.spool import list_segments


def collect_status(settings: Settings) -> dict[str, Any]:
    """A JSON-able summary of every clicklake table and of the spool."""
    tables: dict[str, Any] = {}
    checkpoints_all = []
    fresh = not settings.storage.catalog_uri and not settings.storage.catalog_db.exists()
    catalog = None if fresh else open_catalog(settings, write=False)
    for name in ALL_TABLES:
        t = load_existing(catalog, settings, name) if catalog is not None else None
        if t is None:
            continue
        snap = t.current_snapshot()
        summary = snap.summary.additional_properties if snap and snap.summary else {}
        cps: dict[str, Any] = {}
        for s in reversed(t.metadata.snapshots):
            props = s.summary.additional_properties if s.summary else {}
            pid = props.get(PIPELINE_KEY)
            if pid and pid not in cps and CHECKPOINT_KEY in props:
                data = json.loads(props[CHECKPOINT_KEY])
                cps[pid] = {
                    "source": data.get("source"),
                    "streams": len(data.get("positions", {})),
                    "positions": data.get("positions", {}),
                    "snapshot_id": s.snapshot_id,
                }
        if settings.pipeline.pipeline_id in cps:
            checkpoints_all.append(cps[settings.pipeline.pipeline_id]["positions"])
        tables[name] = {
            "rows": int(summary.get("total-records", 0)),
            "data_files": int(summary.get("total-data-files", 0)),
            "snapshots": len(t.metadata.snapshots),
            "current_snapshot_id": snap.snapshot_id if snap else None,
            "last_commit": datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC).isoformat(timespec="seconds")
            if snap
            else None,
            "partition_spec": str(t.spec()).replace("\n", " "),
            "checkpoints": cps,
        }
    spool_dir = settings.storage.spool_dir
    segments = list_segments(spool_dir)
    sizes = {s: (spool_dir / s).stat().st_size for s in segments}
    done = min_position(checkpoints_all) if checkpoints_all else {}
    lag = sum(max(0, size - done.get(s, 0)) for s, size in sizes.items())
    return {
        "catalog": settings.storage.resolved_catalog_uri(),
        "warehouse": settings.storage.resolved_warehouse(),
        "tables": tables,
        "note": "no tables yet: run `clicklake demo` or `clicklake run`" if not tables else "",
        "spool": {
            "dir": str(spool_dir),
            "segments": len(segments),
            "bytes": sum(sizes.values()),
            "lag_bytes": lag,
        },
    }
