"""The faust application: ``create_app(settings)`` builds it; ``faust -A streams.app worker`` finds it.

Faust hosts the worker (lifecycle, logging, web server); the batch data plane
runs inside it as one background task whose failure crashes the worker.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust
import mode

from .dataplane import DataPlane
from .metrics import Metrics
from .settings import Settings, describe, settings_from_env
from .web import register_views

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """A faust app hosting a data plane configured by ``settings``."""
    metrics = Metrics()
    plane = DataPlane(settings, metrics)
    Path(settings.faust_data_dir).parent.mkdir(parents=True, exist_ok=True)  # faust makes only the leaf
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.brokers.split(",")],
        broker_credentials=_credentials(settings),
        web_host=settings.web_host,
        web_port=settings.web_port,
        store="memory://",
        datadir=settings.faust_data_dir,
        autodiscover=False,
        topic_replication_factor=1,
    )
    hosted = _hosted_service(plane)
    app.service(hosted)
    register_views(app, plane, healthy=lambda: not hosted.failed)
    app.livepulse_plane = plane  # type: ignore[attr-defined]
    log.info("livepulse settings: %s", describe(settings))
    return app


def _credentials(settings: Settings) -> Any:
    sec = settings.security
    if sec.sasl_mechanism:
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            mechanism=sec.sasl_mechanism,
            ssl_context=sec.client_kwargs().get("ssl_context"),
        )
    if sec.security_protocol in ("SSL", "SASL_SSL"):
        return faust.SSLCredentials(sec.client_kwargs()["ssl_context"])
    return None


def _hosted_service(plane: DataPlane) -> Any:
    """A mode service that starts the data plane with the worker and stops it cleanly."""

    class HostedDataPlane(mode.Service):
        failed = False
        _run: asyncio.Task[None] | None = None
        _crashing: asyncio.Future[None] | None = None

        async def on_start(self) -> None:
            await plane.start()
            self._run = asyncio.ensure_future(plane.run())
            self._run.add_done_callback(self._on_done)

        def _on_done(self, task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            HostedDataPlane.failed = True
            log.critical("data plane failed: %r", exc, exc_info=exc)
            self._crashing = asyncio.ensure_future(self.crash(exc))

        async def on_stop(self) -> None:
            plane.request_stop()
            if self._run is not None and not self._run.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._run), timeout=30)
                except TimeoutError:
                    self._run.cancel()
            await plane.stop()

    return HostedDataPlane


_from_env: faust.App | None = None


def __getattr__(name: str) -> Any:
    # `faust -A streams.app worker` looks up `app`: built on first access, from the environment.
    global _from_env
    if name == "app":
        if _from_env is None:
            _from_env = create_app(settings_from_env())
        return _from_env
    raise AttributeError(name)
