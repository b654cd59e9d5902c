"""Apache Kafka as the log: the collector's producer and the pipeline's source.

Each message is one collector envelope (the same line the spool holds, without its newline), or
with ``kafka.envelope = "segment"`` a bare Segment call or batch written by another producer.

Positions are per partition: the stream ``<topic>/<partition>`` and the offset of the next
message. They live in the Iceberg snapshot summary with the data, as the spool's do. The
consumer group only hands out partitions; the offsets it holds are written after each commit
for monitoring tools (consumer lag) and are never read back. On an assignment the consumer is
positioned at the pipeline's own position, so a crash or rebalance neither loses nor
duplicates. A pipeline is a *static* group member (``group.instance.id`` = the pipeline id), so
a restart after a crash takes its partitions back at once instead of waiting for a rebalance.

:class:`KafkaWriter` is what the collector writes through: idempotent, ``acks=all``, and
``append`` returns only once every message of the group is acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from clicklake.config import KafkaSettings
from clicklake.exceptions import ConfigError, StorageError, TransientError
from clicklake.sources.base import Chunk, Position

log = logging.getLogger("clicklake.kafka")


def kafka_client() -> Any:
    """The ``confluent_kafka`` module.

    Raises:
        ConfigError: It is not installed.
    """
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError("the Kafka log needs confluent-kafka: pip install 'clicklake[kafka]'") from None
    return confluent_kafka


def stream_name(topic: str, partition: int) -> str:
    """The stream name of a partition in positions and ``source_stream``."""
    return f"{topic}/{partition}"


def ensure_topic(cfg: KafkaSettings, timeout_s: float = 30.0) -> int:
    """Create ``cfg.topic`` when it does not exist yet; returns its partition count.

    Raises:
        TransientError: The brokers cannot be reached within ``timeout_s``.
    """
    ck = kafka_client()
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers, **_common(cfg.producer)})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = admin.list_topics(topic=cfg.topic, timeout=max(1.0, deadline - time.monotonic()))
            tmeta = meta.topics.get(cfg.topic)
            if tmeta is not None and tmeta.error is None and tmeta.partitions:
                return len(tmeta.partitions)
            fut = admin.create_topics(
                [NewTopic(cfg.topic, cfg.partitions, cfg.replication_factor)], request_timeout=10.0
            )[cfg.topic]
            try:
                fut.result()
                log.info("event=kafka_topic_created topic=%s partitions=%d", cfg.topic, cfg.partitions)
            except ck.KafkaException as exc:
                if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        except ck.KafkaException as exc:
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"cannot reach Kafka at {cfg.bootstrap_servers} to check topic {cfg.topic!r}: {exc}; "
                    "is the broker running (make kafka-start)?"
                ) from exc
            time.sleep(0.5)


def partition_key(line: bytes) -> bytes | None:
    """The message key of a collector line: the user of its (first) event.

    One user's requests go to one partition, in order, so a client's resend follows its original
    in the same partition and the dedup step sees them in the order they were sent, as with the
    spool. ``None`` (any partition) when the line names no user or is not an envelope.
    """
    try:
        payload = orjson.loads(line).get("p")
        if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
            payload = payload["batch"][0] if payload["batch"] else None
        if not isinstance(payload, dict):
            return None
        user = payload.get("userId") or payload.get("anonymousId")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    if user is None or isinstance(user, dict | list):
        return None
    return str(user).encode("utf-8", "replace")


def _common(extra: Mapping[str, str]) -> dict[str, str]:
    """Connection properties shared by admin, producer and consumer (security, client id)."""
    keys = ("security.", "sasl.", "ssl.", "client.")
    return {k: v for k, v in extra.items() if k.startswith(keys)}


class KafkaWriter:
    """Produces collector lines to the topic; ``append`` returns once all are acknowledged.

    Messages are keyed by user (:func:`partition_key`), so one user's events stay in order.

    The producer is idempotent with ``acks=all``: a message the broker acknowledged is on every
    in-sync replica, and retries inside librdkafka never write it twice. A message not
    acknowledged within ``produce_timeout_s`` fails its whole ``append`` (the collector answers
    503 and the client retries; the pipeline's dedup step drops a resend that did get through).

    Args:
        cfg: The Kafka settings.

    Raises:
        ConfigError: confluent-kafka is not installed.
    """

    kind = "kafka"

    def __init__(self, cfg: KafkaSettings):
        ck = kafka_client()
        self.cfg = cfg
        self.topic = cfg.topic
        timeout_ms = int(cfg.produce_timeout_s * 1000)
        conf: dict[str, Any] = {
            "bootstrap.servers": cfg.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": cfg.linger_ms,
            "compression.type": "lz4",
            "message.timeout.ms": timeout_ms,
            "queue.buffering.max.kbytes": 1024 * 1024,
            "message.max.bytes": 8 * 1024 * 1024,
            **cfg.producer,
        }
        self._ck = ck
        self._conf = conf
        self._producer = ck.Producer(conf)
        self._lock = threading.Lock()
        self._closed = False

    def append(self, lines: Sequence[bytes]) -> None:
        """Produce each line (without its newline) as one message and wait for all acks.

        Raises:
            StorageError: A message was not acknowledged (broker down, topic gone, timeout);
                the caller must not acknowledge any line of this group.
        """
        if not lines:
            return
        failed: list[str] = []
        fatal: list[bool] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
                if err.fatal():
                    fatal.append(True)

        with self._lock:
            if self._closed:
                raise StorageError("the Kafka writer is closed")
            produce = self._producer.produce
            for line in lines:
                value = line[:-1] if line.endswith(b"\n") else line
                while True:
                    try:
                        produce(self.topic, value, partition_key(value), on_delivery=on_delivery)
                        break
                    except BufferError:
                        # The local queue is full: serve delivery reports to make room.
                        self._producer.poll(0.05)
                    except Exception as exc:  # KafkaException: message too large, unknown topic, ...
                        self._producer.flush(self.cfg.produce_timeout_s + 1.0)
                        raise StorageError(f"cannot produce to Kafka topic {self.topic!r}: {exc}") from exc
            # Every message either gets its report within message.timeout.ms or is failed by it.
            left = self._producer.flush(self.cfg.produce_timeout_s + 1.0)
        if left:
            failed.append(f"{left} messages still unacknowledged")
        if fatal:
            # An idempotent producer that hit a fatal error refuses everything after; start afresh.
            with self._lock:
                self._producer = self._ck.Producer(self._conf)
            log.warning("event=kafka_producer_recreated error=%r", failed[0])
        if failed:
            raise StorageError(
                f"Kafka did not acknowledge {len(failed)} of {len(lines)} messages: {failed[0]}"
            )

    def close(self) -> None:
        """Deliver what is queued (bounded by the produce timeout) and refuse further appends."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._producer.flush(self.cfg.produce_timeout_s + 1.0)

    def __enter__(self) -> KafkaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaSource:
    """Reads the topic as chunks of whole messages, one chunk per partition and poll.

    A pass (one call of :meth:`chunks`) reads every assigned partition up to the high watermark
    it had when the pass began, then ends; ``clicklake run --once`` is one pass.

    Args:
        cfg: The Kafka settings.
        pipeline_id: The static group member id (one live process per pipeline id).
        batch_messages: Most messages per poll.
        poll_timeout_s: How long one poll waits for messages.
        assign_timeout_s: How long a pass waits for the group to assign partitions.
        idle_end_s: How long a pass waits for messages below the high watermarks before it ends.

    Raises:
        ConfigError: confluent-kafka is not installed.
        TransientError: The brokers cannot be reached to check the topic.
    """

    name = "kafka"

    def __init__(
        self,
        cfg: KafkaSettings,
        pipeline_id: str,
        *,
        batch_messages: int = 20_000,
        poll_timeout_s: float = 0.5,
        assign_timeout_s: float = 30.0,
        idle_end_s: float = 5.0,
    ):
        self._ck = kafka_client()
        self.cfg = cfg
        self.topic = cfg.topic
        self.batch_messages = batch_messages
        self.poll_timeout_s = poll_timeout_s
        self.assign_timeout_s = assign_timeout_s
        self.idle_end_s = idle_end_s
        ensure_topic(cfg)
        conf: dict[str, Any] = {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": cfg.group_id,
            "group.instance.id": f"clicklake-{pipeline_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Only for partitions whose position is below the log start (retention deleted it).
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": 30_000,
            "max.poll.interval.ms": 600_000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            **cfg.consumer,
        }
        self._consumer = self._ck.Consumer(conf)
        self._next: Position = {}  # stream -> next offset to hand out
        self._assigned: dict[str, int] = {}  # stream -> partition
        self._lock = threading.Lock()
        self._subscribed = False
        self._lag: int | None = None
        self._broker_down = False

    # -- group membership -----------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = []
        for p in partitions:
            stream = stream_name(p.topic, p.partition)
            offset = self._next.get(stream, 0)
            tps.append(self._ck.TopicPartition(p.topic, p.partition, offset))
            self._assigned[stream] = p.partition
        consumer.assign(tps)
        log.info(
            "event=kafka_assigned topic=%s partitions=%s",
            self.topic,
            ",".join(f"{tp.partition}@{tp.offset}" for tp in tps),
        )

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for p in partitions:
            self._assigned.pop(stream_name(p.topic, p.partition), None)
        consumer.unassign()
        log.info("event=kafka_revoked topic=%s partitions=%d", self.topic, len(partitions))

    def _seek(self, start: Mapping[str, int]) -> None:
        """Follow the pipeline's position where it differs from the consumer's (the first pass)."""
        for stream, offset in start.items():
            if self._next.get(stream) == offset:
                continue
            self._next[stream] = offset
            part = self._assigned.get(stream)
            if part is not None:
                self._consumer.seek(self._ck.TopicPartition(self.topic, part, offset))

    def _high_watermarks(self) -> dict[str, int] | None:
        try:
            marks = {
                stream: self._consumer.get_watermark_offsets(
                    self._ck.TopicPartition(self.topic, part), timeout=5.0, cached=False
                )[1]
                for stream, part in list(self._assigned.items())
            }
        except self._ck.KafkaException as exc:
            # Once per outage, not once per poll.
            (log.debug if self._broker_down else log.warning)(
                "event=kafka_watermarks_failed error=%r", str(exc)
            )
            self._broker_down = True
            return None
        if self._broker_down:
            log.info("event=kafka_watermarks_ok")
            self._broker_down = False
        return marks

    # -- Source ---------------------------------------------------------------------------------

    def chunks(self, start: Mapping[str, int]) -> Iterator[Chunk]:
        """One pass: whole messages from ``start`` on, up to the high watermarks at its start."""
        with self._lock:
            if not self._subscribed:
                self._next.update({k: v for k, v in start.items() if k.startswith(self.topic + "/")})
                self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
                self._subscribed = True
            self._seek({k: v for k, v in start.items() if k.startswith(self.topic + "/")})
        assign_deadline = time.monotonic() + self.assign_timeout_s
        targets: dict[str, int] | None = None
        last_data = time.monotonic()
        while True:
            if targets is None and self._assigned:
                targets = self._high_watermarks()
                if targets is not None:
                    self._lag = sum(max(0, h - self._next.get(s, 0)) for s, h in targets.items())
            if targets is not None and all(self._next.get(s, 0) >= h for s, h in targets.items()):
                return
            msgs = self._consumer.consume(self.batch_messages, self.poll_timeout_s)
            got_data = False
            for chunk in self._to_chunks(msgs):
                got_data = True
                yield chunk
            if got_data:
                last_data = time.monotonic()
                continue
            # No data: an empty poll, or only consumer errors (a broker restarting reports
            # them every few seconds; counting them as data kept a pass, and the pipeline's
            # stop, waiting for ever) or messages not ours.
            if targets is None and time.monotonic() < assign_deadline:
                continue
            # Offsets below the watermark that do not come for a while (compacted away, or the
            # broker went away): end the pass; the next one carries on from here.
            if targets is None or time.monotonic() - last_data >= self.idle_end_s:
                return

    def _to_chunks(self, msgs: list[Any]) -> Iterator[Chunk]:
        by_partition: dict[int, list[Any]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise TransientError(f"Kafka consumer failed: {err}")
                log.warning("event=kafka_consume_error error=%r", str(err))
                continue
            if m.topic() != self.topic:
                continue
            by_partition.setdefault(m.partition(), []).append(m)
        for part, ms in by_partition.items():
            stream = stream_name(self.topic, part)
            expected = self._next.get(stream)
            offsets = np.fromiter((m.offset() for m in ms), np.int64, len(ms))
            if expected is not None and offsets[0] < expected:
                # Messages from before a seek that were already in flight: not ours to hand out.
                keep = offsets >= expected
                ms = [m for m, k in zip(ms, keep, strict=True) if k]
                offsets = offsets[keep]
                if not ms:
                    continue
            values = [m.value() or b"" for m in ms]
            data = b"\n".join(values) + b"\n"
            if data.count(b"\n") != len(values):
                # A message with line breaks (pretty-printed JSON from another producer): outside
                # strings they are whitespace, and inside strings JSON has none.
                values = [v.replace(b"\n", b" ") for v in values]
                data = b"\n".join(values) + b"\n"
            nxt = int(offsets[-1]) + 1
            self._next[stream] = nxt
            yield Chunk(stream, int(offsets[0]), data, self.cfg.envelope, offsets, nxt)

    def total_bytes(self) -> int | None:
        return None

    def lag_messages(self) -> int | None:
        """Messages between the position and the high watermarks, as of the last pass start.

        (Not ``lag``: that name is the byte-lag capability the pipeline's metrics look for.)
        """
        return self._lag

    def prune(self, position: Mapping[str, int]) -> Position:
        return dict(position)

    def committed(self, position: Mapping[str, int]) -> None:
        """Store the committed position in the consumer group, for lag monitoring only."""
        tps = [
            self._ck.TopicPartition(self.topic, int(stream.rsplit("/", 1)[1]), offset)
            for stream, offset in position.items()
            if stream.startswith(self.topic + "/") and stream in self._assigned
        ]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except self._ck.KafkaException as exc:
            log.warning("event=kafka_offset_commit_failed error=%r", str(exc))

    def close(self) -> None:
        """Leave the consumer (a static member keeps its partitions until its session ends)."""
        with contextlib.suppress(RuntimeError):  # already closed
            self._consumer.close()
