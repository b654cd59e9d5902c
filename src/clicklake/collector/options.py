"""The collector's settings, read from ``Settings.collector`` with defaults for keys not yet there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clicklake.config import KafkaSettings, Settings


@dataclass(frozen=True)
class CollectorOptions:
    """What the HTTP collector needs to know, in one frozen object.

    Attributes:
        spool_dir: Where accepted requests are appended.
        write_keys: Write key -> app id.
        max_event_bytes: Largest single event (413 above).
        max_request_bytes: Largest request body, on the wire and after decompression (413 above).
        cors_origins: Origins browsers may post from (``"*"`` allows any); empty refuses browsers.
        max_queue_lines: Requests waiting for the spool before new ones get 503 (log behind).
        max_queue_bytes: Bytes waiting for the spool before new requests get 503.
        group_commit_max_lines: Most requests written by one append (one fsync).
        group_commit_max_bytes: Most bytes written by one append.
        retry_after_s: The ``Retry-After`` of a 503, in seconds.
        segment_max_bytes: Spool segment rotation size.
        segment_max_age_s: Spool segment rotation age.
        log: Where accepted requests go: ``"spool"`` or ``"kafka"`` (``collector.log``).
        kafka: The Kafka settings, for ``log = "kafka"``.
    """

    spool_dir: Path
    write_keys: Mapping[str, str] = field(default_factory=dict)
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    cors_origins: tuple[str, ...] = ()
    max_queue_lines: int = 20_000
    max_queue_bytes: int = 256 * 1024 * 1024
    group_commit_max_lines: int = 5_000
    group_commit_max_bytes: int = 16 * 1024 * 1024
    retry_after_s: int = 1
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age_s: float = 60.0
    log: str = "spool"
    kafka: KafkaSettings = field(default_factory=KafkaSettings)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CollectorOptions:
        """Build the options from the settings; keys the settings lack keep their defaults.

        Args:
            settings: The clicklake settings.
            **overrides: Field values that win over the settings (tests, benchmarks).

        Returns:
            The options.
        """
        col = settings.collector
        values: dict[str, Any] = {
            "spool_dir": settings.storage.spool_dir,
            "write_keys": dict(col.write_keys),
            "max_event_bytes": col.max_event_bytes,
            "max_request_bytes": col.max_request_bytes,
            "segment_max_bytes": settings.spool.segment_max_bytes,
            "segment_max_age_s": settings.spool.segment_max_age_s,
            "cors_origins": col.cors_origins,
            "max_queue_lines": col.max_queue_lines,
            "max_queue_bytes": col.max_queue_bytes,
            "group_commit_max_lines": col.group_commit_max_lines,
            "group_commit_max_bytes": col.group_commit_max_bytes,
            "retry_after_s": col.retry_after_s,
            "log": col.log,
            "kafka": settings.kafka,
        }
        values.update(overrides)
        values["cors_origins"] = tuple(values.get("cors_origins", ()))
        return cls(**values)
