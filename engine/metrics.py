"""Prometheus metrics and the `/metrics` + `/healthz` endpoint (prometheus-client, served by aiohttp).

Labels carry only closed sets of words (platform names, event kinds, job kinds, outcomes, refusal
reasons, artifact kinds): never a platform id, pseudonym, name or caption. Each `Engine` has its own
registry, so several engines in one process (tests) do not collide. Gauges about stored state are read
from the database at each scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class Metrics:
    """Every metric of one process."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.updates = Counter(
            "likeness_updates",
            "Updates received, by platform and kind",
            ["platform", "kind"],
            registry=registry,
        )
        self.photos = Counter(
            "likeness_photos",
            "Photos checked, by outcome (accepted or the rejection)",
            ["outcome"],
            registry=registry,
        )
        self.jobs = Counter(
            "likeness_jobs",
            "Jobs ended or retried, by kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "likeness_job_seconds",
            "Duration of finished jobs",
            ["kind"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("likeness_queue_depth", "Jobs waiting, by kind", ["kind"], registry=registry)
        self.jobs_running = Gauge(
            "likeness_jobs_running", "Jobs running, by kind", ["kind"], registry=registry
        )
        self.deliveries_pending = Gauge(
            "likeness_deliveries_pending", "Results waiting to be sent", registry=registry
        )
        self.deletions = Counter(
            "likeness_deletions", "Personal artifacts deleted, by kind", ["artifact"], registry=registry
        )
        self.deadlines_overdue = Gauge(
            "likeness_deadlines_overdue",
            "Deletion deadlines that have passed (should stay 0)",
            registry=registry,
        )
        self.refusals = Counter(
            "likeness_refusals", "Requests refused, by reason", ["reason"], registry=registry
        )
        self.paused = Gauge(
            "likeness_intake_paused", "1 while an operator paused new work", registry=registry
        )
        self.blob_bytes = Gauge("likeness_blob_bytes", "Bytes of encrypted blobs on disk", registry=registry)
        # Present from the start, so dashboards and alerts see 0 rather than nothing.
        for kind in ("train", "generate"):
            self.queue_depth.labels(kind)
            self.jobs_running.labels(kind)
        for artifact in ("photo", "adapter", "output", "message", "job", "user"):
            self.deletions.labels(artifact)
        for reason in ("access", "quota", "busy", "paused", "blocked", "flood"):
            self.refusals.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`GET /metrics` (Prometheus text format) and `GET /healthz` (200 or 503) on one address.

    `render` refreshes the gauges and returns the exposition; `healthy` says whether the process can
    serve (store reachable, front-ends connected).
    """

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], Awaitable[bytes]],
        healthy: Callable[[], Awaitable[bool]],
    ):
        self.host, self.port = host, port
        self._render, self._healthy = render, healthy
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port (tests): report the one taken
            self.port = self._runner.addresses[0][1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        try:
            ok = await self._healthy()
        except Exception:
            log.warning("health check failed", exc_info=True)
            ok = False
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unavailable\n")
