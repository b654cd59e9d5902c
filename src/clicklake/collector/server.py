"""Run the collector on uvicorn, optionally with the embedded pipeline loop (``clicklake serve``).

Shutdown on SIGTERM or SIGINT: uvicorn stops accepting, finishes in-flight requests, and the
app's lifespan shutdown writes every queued group commit and closes the spool writer. Then the
pipeline loop is asked to stop, commits what it holds, and ``serve`` returns.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import Gauge

from clicklake.collector.app import CollectorApp
from clicklake.collector.options import CollectorOptions
from clicklake.config import Settings
from clicklake.exceptions import ClickLakeError

log = logging.getLogger("clicklake.collector")


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one).

    Args:
        host: The address to bind.
        port: The port (0 for any free one).
        backlog: The listen backlog.

    Returns:
        The bound, listening socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration the collector runs with (httptools and uvloop when installed).

    Args:
        app: The collector app.
        host: The address to bind.
        port: The port.
        **overrides: Other ``uvicorn.Config`` arguments.

    Returns:
        The configuration.
    """
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "ws": "none",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
        "backlog": 2048,
    }
    kwargs.update(overrides)
    return uvicorn.Config(app, **kwargs)


def serve(
    settings: Settings,
    *,
    with_pipeline: bool = False,
    sock: socket.socket | None = None,
    options: CollectorOptions | None = None,
) -> None:
    """Run the collector until SIGTERM or SIGINT (``clicklake serve``).

    Args:
        settings: The settings (``collector.*`` for the server, the rest for the pipeline).
        with_pipeline: Also run the embedded pipeline over the spool in a background thread,
            stopped with a final commit on shutdown.
        sock: An already bound socket to serve on (tests); default binds
            ``collector.host:collector.port``.
        options: Collector options (default: from ``settings``).

    Raises:
        StorageError: The spool directory cannot be created.
        ClickLakeError: The pipeline failed (after the collector has shut down cleanly).
    """
    opts = options or CollectorOptions.from_settings(settings)
    app = CollectorApp(opts)
    host, port = settings.collector.host, settings.collector.port
    # The dashboard and /api/v1 share the collector's port (issue 6).
    from clicklake.web.app import with_web

    server = uvicorn.Server(uvicorn_config(with_web(app, settings), host, port))
    sock = sock or bind_socket(host, port)
    log.info("event=collector_listen address=%s:%d pipeline=%s", host, sock.getsockname()[1], with_pipeline)
    if not with_pipeline:
        # uvicorn re-raises the signal it caught once it has shut down; exit quietly instead.
        _install_quiet_handlers()
        server.run(sockets=[sock])
        return

    from clicklake.engines.local import Pipeline, PipelineLock, install_signal_handlers
    from clicklake.sources.spool import SpoolSource

    errors: list[BaseException] = []
    with PipelineLock(settings):
        from clicklake.metrics import PipelineMetrics

        # The pipeline's metrics join the collector's registry: one GET /metrics shows both.
        metrics = PipelineMetrics(app.metrics.registry)
        source: Any = SpoolSource(settings.storage.spool_dir)
        if settings.collector.log == "kafka":
            from clicklake.sources.kafka import KafkaSource

            kafka_source = KafkaSource(settings.kafka, settings.pipeline.pipeline_id)
            source = kafka_source
            lag = Gauge(
                "clicklake_pipeline_kafka_lag_messages",
                "Messages between the pipeline's position and the partitions' ends (at its last pass).",
                registry=app.metrics.registry,
            )
            lag.set_function(lambda: float(kafka_source.lag_messages() or 0))
        pipeline = Pipeline(settings, source, metrics=metrics)
        # These handlers are what uvicorn restores and re-raises into after its own shutdown:
        # the pipeline then stops with a final commit.
        install_signal_handlers(pipeline, drain=True)

        def run_pipeline() -> None:
            try:
                pipeline.run()
            except BaseException as exc:  # reported after the collector has shut down
                log.exception("event=pipeline_failed")
                errors.append(exc)
                server.should_exit = True

        thread = threading.Thread(target=run_pipeline, name="clicklake-pipeline", daemon=True)
        thread.start()
        from clicklake.lakehouse.scheduler import MaintenanceMetrics, MaintenanceScheduler

        # Maintenance on its schedule, counted on the collector's /metrics.
        maintenance = MaintenanceScheduler(settings, MaintenanceMetrics(app.metrics.registry))
        maintenance.start()
        try:
            server.run(sockets=[sock])
        finally:
            maintenance.stop()
            # The collector has stopped accepting and flushed its last group commit: the
            # pipeline reads the spool to its end, commits, and only then returns.
            pipeline.stop(drain=True)
            thread.join()
            if hasattr(source, "close"):
                source.close()
    if errors:
        raise errors[0]


def _install_quiet_handlers() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("event=collector_stopped signal=%d", signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class BackgroundCollector:
    """The collector on a free port of ``host``, in a background thread of this process.

    ``clicklake demo`` sends its generated events through one. Leaving the ``with`` block stops
    it gracefully: every acknowledged request is in the spool.

    Args:
        options: The collector options.
        host: The address to bind (a free port is picked).
    """

    def __init__(self, options: CollectorOptions, host: str = "127.0.0.1"):
        self.app = CollectorApp(options)
        self.sock = bind_socket(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn_config(self.app, host, self.sock.getsockname()[1]))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="clicklake-collector", daemon=True
        )

    def __enter__(self) -> BackgroundCollector:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                self.sock.close()
                raise ClickLakeError("the collector did not start (see the log)")
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
