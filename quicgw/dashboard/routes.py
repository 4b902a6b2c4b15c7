"""The operator endpoints, transport-independent: ``/metrics`` (Prometheus text) and the
dashboard (``/dashboard``, its static files, ``/dashboard/api/live``,
``/dashboard/api/benchmarks``).

The gateway's application core answers them on its public listeners (HTTP/3 and TLS/TCP)
unless ``gateway.public_ops = false``; the optional plain-HTTP admin port
(:mod:`quicgw.dashboard.admin`) answers them too. Every endpoint is a GET with a complete
response; the static files are read once, at start-up, from the package.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from quicgw.dashboard.data import (
    BenchmarkLibrary,
    ClassInfo,
    GatewayInfo,
    InstanceInfo,
    default_benchmark_dirs,
    live_view,
)
from quicgw.metrics import CONTENT_TYPE, GatewayMetrics

Headers = list[tuple[bytes, bytes]]

_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".LICENSE": b"text/plain; charset=utf-8"}
# The page loads only its own files and talks only to its own origin.
_SECURITY: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy",
     b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"),
]
LIVE_CACHE_S = 1.0
_STATIC_FILES = ("index.html", "app.js", "style.css", "vendor/uPlot.iife.min.js",
                 "vendor/uPlot.min.css", "vendor/uPlot.LICENSE")


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    headers: Headers
    body: bytes


def _static() -> dict[str, Page]:
    root = resources.files("quicgw.dashboard") / "static"
    pages = {}
    for name in _STATIC_FILES:
        body = (root / name).read_bytes()
        suffix = "." + name.rpartition(".")[2]
        # Our own files may change with an upgrade; the vendored library only with its version.
        cache = b"public, max-age=86400" if name.startswith("vendor/") else b"no-cache"
        pages[name] = Page(200, [(b"content-type", _TYPES[suffix]), (b"cache-control", cache),
                                 *_SECURITY], body)
    return pages


class OpsRoutes:
    """``endpoints`` maps each exact path to an endpoint name; :meth:`get` answers by name."""

    def __init__(self, metrics: GatewayMetrics, info: GatewayInfo,
                 benchmark_dirs: list[Path]) -> None:
        self.metrics = metrics
        self.info = info
        self.benchmarks = BenchmarkLibrary(benchmark_dirs)
        self._static = _static()
        self.endpoints: dict[str, str] = {
            "/metrics": "metrics",
            "/dashboard": "dashboard",
            "/dashboard/": "dashboard",
            "/dashboard/api/live": "dashboard_live",
            "/dashboard/api/benchmarks": "dashboard_benchmarks",
            **{f"/dashboard/static/{name}": f"static:{name}" for name in _STATIC_FILES},
        }
        self.names = frozenset(self.endpoints.values())
        self._live_page: Page | None = None
        self._live_at = -LIVE_CACHE_S

    def live(self) -> dict[str, Any]:
        return live_view(self.metrics.samples(), self.info, time.time())

    async def get(self, endpoint: str) -> Page:
        if endpoint == "metrics":
            return Page(200, [(b"content-type", CONTENT_TYPE.encode())], self.metrics.render())
        if endpoint == "dashboard":
            return self._static["index.html"]
        if endpoint == "dashboard_live":
            # Built on the event loop (a few ms); shared by every open dashboard for a second.
            now = time.monotonic()
            if self._live_page is None or now - self._live_at >= LIVE_CACHE_S:
                self._live_page, self._live_at = _json(self.live()), now
            return self._live_page
        if endpoint == "dashboard_benchmarks":
            try:  # parsing files must not stall the event loop (and every QUIC connection)
                body = await asyncio.to_thread(self.benchmarks.body)
            except ImportError as e:
                return _json({"error": f"the benchmark browser needs the ilp package: {e}"},
                             status=500)
            return Page(200, [(b"content-type", b"application/json"),
                              (b"cache-control", b"no-cache")], body)
        if endpoint.startswith("static:"):
            page = self._static.get(endpoint.removeprefix("static:"))
            if page is not None:
                return page
        return _json({"error": f"no such operator endpoint {endpoint!r}"}, status=404)


def _json(obj: Any, status: int = 200) -> Page:
    return Page(status, [(b"content-type", b"application/json"), (b"cache-control", b"no-cache")],
                json.dumps(obj, allow_nan=False).encode())


def instrument(app) -> tuple[GatewayMetrics, OpsRoutes]:
    """The metrics and operator routes of a :class:`~quicgw.gateway.app.GatewayApp`, built from
    its configuration and instances (called at the end of its constructor)."""
    config = app.config
    gw = config.gateway
    metrics = GatewayMetrics(
        app.class_names,
        [(i.backend.name, i.load, i.queue) for i in app.instances],
        router=gw.router, scheduler=gw.scheduler, clock=app.clock)
    table = config.class_table
    info = GatewayInfo(
        classes=tuple(ClassInfo(c.name, c.priority, c.deadline_ms, c.reward_weight)
                      for c in (table.classes[name] for name in app.class_names)),
        instances=tuple(InstanceInfo(i.backend.name, i.info.model, i.info.gpu,
                                     i.queue.capacity) for i in app.instances),
        scheduler=gw.scheduler, router=gw.router, started_unix=time.time(),
        version=_version())
    data_dir = getattr(gw, "dashboard_data_dir", None)
    dirs = [Path(data_dir)] if data_dir else default_benchmark_dirs()
    return metrics, OpsRoutes(metrics, info, dirs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quicgw")
    except PackageNotFoundError:
        return ""
