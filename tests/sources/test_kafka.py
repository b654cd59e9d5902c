"""The Kafka source against a real broker: positions are Kafka offsets, kept in the Iceberg
checkpoint; a second pass reads nothing twice; messages with line breaks still make one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest

from clicklake.config import Settings, load_settings
from clicklake.engines.local import Pipeline
from clicklake.events.decode import lines_of
from clicklake.events.envelope import encode_line
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from clicklake.lakehouse.checkpoint import read_checkpoint
from clicklake.sources.base import Chunk
from clicklake.sources.kafka import KafkaSource, partition_key
from tests.sources.fixtures import KafkaBroker


def test_lines_of_takes_message_offsets_from_the_chunk() -> None:
    chunk = Chunk("t/0", 40, b'{"a":1}\n\n{"b":2}\n', "spool", np.array([40, 41, 45], np.int64), 46)
    lines, bad = lines_of(chunk)
    assert bad is None
    # The blank (empty) message is dropped; the others keep their message offsets.
    assert lines.column("source_offset").to_pylist() == [40, 45]
    assert chunk.end == 46
    with pytest.raises(ValueError, match="2 message offsets"):
        lines_of(Chunk("t/0", 0, b"x\ny\nz\n", "spool", np.array([0, 1], np.int64), 2))


def test_messages_are_keyed_by_the_user_of_their_first_event() -> None:
    def line(body: bytes) -> bytes:
        return encode_line(body, app_id="a", received_ms=1)[:-1]

    assert partition_key(line(b'{"batch":[{"userId":7},{"userId":"other"}]}')) == b"7"
    assert partition_key(line(b'{"type":"page","anonymousId":"anon-1"}')) == b"anon-1"
    assert partition_key(line(b'{"type":"page","userId":"u","anonymousId":"anon-1"}')) == b"u"
    # No user, no envelope, an empty batch: any partition.
    for body in (b'{"batch":[]}', b"[1]", b'{"userId":{"a":1}}'):
        assert partition_key(line(body)) is None
    assert partition_key(b"{not json") is None


def _line(i: int, *, pretty: bool = False) -> bytes:
    call = {"type": "track", "event": "Clicked", "userId": f"u{i}", "messageId": f"kafka-{i}"}
    body = orjson.dumps(call, option=orjson.OPT_INDENT_2 if pretty else 0)
    line = encode_line(body, app_id="app", received_ms=int(time.time() * 1000))
    if pretty:
        # A producer other than the collector may send line breaks between tokens.
        line = line.replace(b'"p":{', b'"p":\n{')
    return line[:-1]


def _settings(tmp_path: Path, broker: KafkaBroker, topic: str) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(tmp_path / "data")},
        kafka={"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"g-{topic}"},
    )


@pytest.mark.integration
def test_offsets_land_in_the_checkpoint_and_a_second_pass_adds_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    topic = kafka_broker.new_topic(3)
    values = [_line(i, pretty=(i % 50 == 0)) for i in range(600)]
    values[7] = b"{not json"
    kafka_broker.produce(topic, values)
    high = kafka_broker.high_watermarks(topic)
    assert len([p for p, h in high.items() if h]) == 3, "the messages should be spread over every partition"

    settings = _settings(tmp_path, kafka_broker, topic)
    source = KafkaSource(settings.kafka, settings.pipeline.pipeline_id)
    try:
        stats = Pipeline(settings, source).run(once=True)
    finally:
        source.close()
    assert (stats.events, stats.failed) == (599, 1)

    catalog = open_catalog(settings)
    events = catalog.load_table(table_id(settings, EVENTS))
    failed = catalog.load_table(table_id(settings, FAILED_EVENTS))
    rows = events.scan(selected_fields=("event_id", "source_stream", "source_offset")).to_arrow()
    assert sorted(rows["event_id"].to_pylist()) == sorted(f"kafka-{i}" for i in range(600) if i != 7)
    # Every row's position is a real offset of its partition, each used once.
    for stream, h in high.items():
        offs = pc.filter(rows["source_offset"], pc.equal(rows["source_stream"], stream)).to_pylist()
        assert len(offs) == len(set(offs))
        assert all(0 <= o < h for o in offs)
    bad = failed.scan(selected_fields=("error_type", "raw")).to_arrow().to_pylist()
    assert [(r["error_type"], r["raw"]) for r in bad] == [("invalid_json", b"{not json")]
    # Both tables' checkpoints hold the high watermark of every partition.
    for table in (events, failed):
        cp = read_checkpoint(table, settings.pipeline.pipeline_id)
        assert cp is not None
        assert cp.positions == high

    # More messages; a new source (a restarted pipeline) reads only those.
    kafka_broker.produce(topic, [_line(i) for i in range(600, 650)])
    source = KafkaSource(settings.kafka, settings.pipeline.pipeline_id)
    try:
        stats = Pipeline(settings, source).run(once=True)
    finally:
        source.close()
    assert (stats.events, stats.failed, stats.skipped) == (50, 0, 0)
    assert events.refresh().scan().to_arrow().num_rows == 649


class _ErrorsOnly:
    """A consumer whose every poll returns one non-fatal error and no message: what a broker
    restart looks like from the consumer (librdkafka reports timed-out requests every few
    seconds). A stand-in: a real broker does not produce these at a pace a test can rely on."""

    def __init__(self) -> None:
        self.polls = 0

    def consume(self, num: int, timeout: float) -> list[Any]:
        self.polls += 1
        if self.polls > 5_000:
            raise AssertionError("the pass never ended")
        time.sleep(0.002)
        return [_ErrorMessage()]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 100


class _ErrorMessage:
    def error(self) -> Any:
        return _Error()


class _Error:
    def fatal(self) -> bool:
        return False

    def __str__(self) -> str:
        return "GroupCoordinator: timed out"


def test_a_pass_of_consumer_errors_alone_ends_after_idle_end_s() -> None:
    # The pass is below its high watermark (offset 5 of 100) and gets only errors: it must end
    # once idle_end_s has passed without data, as after empty polls, so that the pipeline can
    # stop or start the next pass.
    from clicklake.sources.kafka import kafka_client

    source = object.__new__(KafkaSource)
    source._ck = kafka_client()
    source.topic = "t"
    source.batch_messages = 10
    source.poll_timeout_s = 0.01
    source.assign_timeout_s = 1.0
    source.idle_end_s = 0.3
    source._consumer = _ErrorsOnly()
    source._next = {"t/0": 5}
    source._assigned = {"t/0": 0}
    source._lock = threading.Lock()
    source._subscribed = True
    source._lag = None
    source._broker_down = False
    t0 = time.monotonic()
    assert list(source.chunks({"t/0": 5})) == []
    assert 0.3 <= time.monotonic() - t0 < 5.0
    assert source._consumer.polls > 1
