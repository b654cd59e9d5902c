"""A real Apache Kafka broker (KRaft, jars from Maven Central) for the integration tests.

Started once per session with ``deploy/kafka/kafka.sh`` on free ports in a temporary directory,
and stopped at the end. Tests that restart it (``broker.restart()``) get it back on the same
ports with its data. Each test uses its own topic, so tests do not see each other's messages.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "kafka" / "kafka.sh"


class KafkaBroker:
    """One broker started by ``kafka.sh`` on ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.bootstrap = ""

    def _script(self, *args: str, timeout: float = 300) -> str:
        res = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            log = self.directory / "broker.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed: {res.stderr}\n{tail}")
        return res.stdout

    def start(self) -> None:
        out = self._script("start", str(self.directory), "0", "0")
        match = re.search(r"bootstrap=(\S+)", out)
        assert match, out
        self.bootstrap = match.group(1)

    def stop(self) -> None:
        self._script("stop", str(self.directory))

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_topic(self, partitions: int) -> str:
        """A fresh topic with ``partitions`` partitions."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        name = f"t-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=60)
        return name

    def produce(self, topic: str, values: Iterable[bytes]) -> int:
        """Produce ``values`` (acks=all) round-robin over the partitions; returns how many.

        The partition is named for each message: without a key, librdkafka's sticky partitioner
        may put a whole quick burst into one partition, and the tests need every one used.
        """
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
        )
        partitions = len(producer.list_topics(topic, timeout=30).topics[topic].partitions)
        errors: list[str] = []
        n = 0
        for value in values:
            while True:
                try:
                    producer.produce(
                        topic,
                        value,
                        partition=n % partitions,
                        on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            n += 1
        assert producer.flush(120) == 0
        assert not errors, errors[:3]
        return n

    def high_watermarks(self, topic: str) -> dict[str, int]:
        """``{"<topic>/<partition>": high watermark}`` for every partition of ``topic``."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
        try:
            meta = consumer.list_topics(topic, timeout=30)
            return {
                f"{topic}/{p}": consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in meta.topics[topic].partitions
            }
        finally:
            consumer.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A single-node Kafka broker on 127.0.0.1, free ports, for the whole session."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
