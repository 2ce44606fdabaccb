"""What a process needs to run the engine in the background: logging, stop signals, the retention
scheduler and (optionally) an embedded worker. `python -m bot` and `python -m engine` both use it.

Callers outside the engine use this module and the facade; they never reach the scheduler or the worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from engine import logs
from engine.errors import StartupError
from engine.facade import Engine
from engine.metrics import MetricsServer
from engine.retention import MessageDeleter, RetentionScheduler
from engine.settings import parse_address

log = logging.getLogger(__name__)

NOISY_LOGGERS = ("httpx", "apscheduler", "telegram", "discord", "PIL", "diffusers", "urllib3")


def setup_logging(level: str) -> None:
    """Plain lines on stderr; libraries quieter; no personal data in any record (`engine.logs`)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logs.install()
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (or its type), for the operator."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def serve_metrics(engine: Engine, connected: Callable[[], bool] | None = None) -> MetricsServer | None:
    """Serve `/metrics` and `/healthz` on `LIKENESS_METRICS_ADDRESS` (None when it is empty).
    `/healthz` is 200 while the store answers and `connected()` (the front-ends, if any) is true."""
    address = parse_address(engine.settings.metrics.address)
    if address is None:
        return None

    async def healthy() -> bool:
        return await engine.store_reachable() and (connected is None or connected())

    server = MetricsServer(address[0], address[1], engine.metrics_text, healthy)
    try:
        await server.start()
    except OSError as error:
        raise StartupError(
            f"metrics: cannot listen on {engine.settings.metrics.address}: {one_line(error)}"
        ) from error
    return server


class Background:
    """The retention scheduler and, when asked, an embedded worker, around one `Engine`.

    `models`: an already loaded model set for the worker (tests share one between apps).
    """

    def __init__(self, engine: Engine, *, with_worker: bool, models: Any = None):
        self.engine = engine
        self.retention: RetentionScheduler | None = None
        self.worker: Any = None
        self.metrics: MetricsServer | None = None
        self._task: asyncio.Task | None = None
        if with_worker:
            from engine.worker import Worker

            self.worker = Worker(engine, models=models)

    async def start(
        self,
        delete_message: MessageDeleter | None,
        stopped: asyncio.Event,
        connected: Callable[[], bool] | None = None,
    ) -> None:
        """Delete overdue data, make pending deliveries due, serve metrics (if configured; `connected`
        says whether the front-ends are up), load the model (a failure is a `StartupError`); the worker
        starts with `run_worker`, after the front-ends are up."""
        self.metrics = await serve_metrics(self.engine, connected)
        sweep = self.engine.settings.retention.sweep_interval
        self.retention = RetentionScheduler(self.engine.retention, sweep, delete_message)
        overdue = await self.retention.start()
        if overdue:
            log.info("deleted overdue data at start-up: %s", overdue)
        await self.engine.retry_deliveries_now()
        self._stopped = stopped
        if self.worker is not None and self.worker.models is None:
            from engine.worker import Models

            try:
                self.worker.models = await asyncio.to_thread(Models, self.engine)
            except Exception as error:
                raise StartupError(f"engine: {one_line(error)}") from error

    def run_worker(self) -> None:
        """Start the embedded worker (if any) as a task; if it dies, the process is told to stop."""
        if self.worker is not None:
            self._task = asyncio.create_task(self._run_worker())

    async def _run_worker(self) -> None:
        try:
            await self.worker.run()
        except Exception as error:
            log.error("the engine worker stopped: %s", one_line(error))
            self._stopped.set()
            raise

    @property
    def compute_seconds(self) -> float:
        return self.worker.compute_seconds if self.worker is not None else 0.0

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.retention:
            self.retention.stop()
        if self.metrics is not None:
            await self.metrics.stop()
