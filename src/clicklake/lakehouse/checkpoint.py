"""Source positions kept in Iceberg snapshot summaries.

Each commit of the pipeline writes, into the summary of the very snapshot that adds its rows:

``clicklake.pipeline``    the pipeline id
``clicklake.checkpoint``  JSON ``{"source": ..., "positions": {stream: next offset}}``
``clicklake.commit-id``   a UUID, to find the commit again when its outcome was ambiguous

A table's checkpoint for a pipeline is the one in its newest snapshot (walking back from the
current one) written by that pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pyiceberg.table import Table

PIPELINE_KEY = "clicklake.pipeline"
CHECKPOINT_KEY = "clicklake.checkpoint"
COMMIT_ID_KEY = "clicklake.commit-id"


@dataclass(frozen=True)
class Checkpoint:
    source: str
    positions: dict[str, int] = field(default_factory=dict)
    snapshot_id: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "positions": self.positions}, sort_keys=True, separators=(",", ":")
        )


def _ancestors(table: Table):  # type: ignore[no-untyped-def]
    meta = table.metadata
    by_id = {s.snapshot_id: s for s in meta.snapshots}
    sid = meta.current_snapshot_id
    while sid is not None and sid in by_id:
        snap = by_id[sid]
        yield snap
        sid = snap.parent_snapshot_id


def read_checkpoint(table: Table, pipeline_id: str) -> Checkpoint | None:
    """The newest checkpoint ``pipeline_id`` committed to ``table``, or ``None``."""
    for snap in _ancestors(table):
        props = snap.summary.additional_properties if snap.summary else {}
        if props.get(PIPELINE_KEY) == pipeline_id and CHECKPOINT_KEY in props:
            data = json.loads(props[CHECKPOINT_KEY])
            return Checkpoint(
                source=data.get("source", ""),
                positions={k: int(v) for k, v in data.get("positions", {}).items()},
                snapshot_id=snap.snapshot_id,
            )
    return None


def find_commit(table: Table, commit_id: str) -> int | None:
    """The id of the snapshot carrying ``commit_id``, if that commit landed."""
    for snap in _ancestors(table):
        if snap.summary and snap.summary.additional_properties.get(COMMIT_ID_KEY) == commit_id:
            return int(snap.snapshot_id)
    return None
