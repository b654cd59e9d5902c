"""How events are decoded: the decoder's limits and defaults.

Kept apart from :mod:`clicklake.events.decode` (which imports DuckDB, numpy, pyarrow and the
schema) so that a run's head start can build them before those imports (see
:mod:`clicklake.engines.head_start`); ``clicklake.events.decode.DecodeOptions`` is this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and defaults of decoding.

    Attributes:
        write_keys: Write key -> app id, for events that carry ``writeKey`` (files).
        default_app_id: App id of file events without a known write key.
        max_event_bytes: Largest event JSON accepted (Segment: 32 KB).
        max_request_bytes: Largest line (request) accepted (Segment: 500 KB).
        max_future_s: How far after the collector time a derived timestamp may be.
        max_age_days: How far before the collector time a derived timestamp may be.
        fast_path: Decode typical lines with DuckDB's read_json (same results, several times
            faster); off, every line takes the exact path.
    """

    write_keys: dict[str, str] = field(default_factory=dict)
    default_app_id: str = "default"
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_future_s: float = 24 * 3600.0
    max_age_days: float = 365.0
    fast_path: bool = True
