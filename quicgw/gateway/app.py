"""The gateway's application core, independent of the transport.

Both shells (the HTTP/3 server in :mod:`quicgw.gateway.h3server` and the ASGI adapter served by
hypercorn over TLS/TCP in :mod:`quicgw.gateway.asgi`) drive it the same way::

    exchange = app.open(method, path, headers, now)      # at the request's headers
    if exchange.error: send exchange.error               # 404/405/401/403/400, before any body
    else: tell the transport exchange.qos; read the body (<= app.max_body_bytes, else 413)
          await app.handle(exchange, body, responder)

``handle`` parses and validates the OpenAI body, routes it (``gateway.router`` over a live
:class:`~quicgw.core.routing.ClusterView`), waits for admission to the chosen instance, proxies
it upstream and relays the answer (token streams chunk by chunk as they arrive).

Reliability, in the same place:

* rate limits (:mod:`quicgw.gateway.ratelimit`): requests per minute at ``open``, tokens per
  minute when the body is parsed; 429 with Retry-After;
* every proxied request expires ``deadline_timeout_factor`` times its deadline after it
  arrived, queue time included: 504, or an error event in a stream already started, and the
  backend request is cancelled;
* health (:mod:`quicgw.gateway.health`): probes every ``health_interval_s``; an instance that
  goes down sends the requests waiting in its admission queue to other instances, as does a
  backend that refuses the connection; a backend that fails after the request reached it is an
  explicit error for that request (502), never a retry that could run a request twice;
* a token stream the backend ends without ``data: [DONE]`` gets an error event appended, so a
  truncated answer is never mistaken for a complete one;
* graceful shutdown is the transports' (GOAWAY, drain); ``draining`` makes ``/healthz`` say
  so, for load balancers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicgw.config import BackendConfig, Config
from quicgw.core.catalog import DEFAULT_TASK, TASKS, latency_model, resolve_model
from quicgw.core.features import RateEstimator
from quicgw.core.qos import RequestQoS
from quicgw.core.routing import (
    ClusterView,
    InstanceInfo,
    InstanceLoad,
    NoInstanceAvailable,
    Router,
    RouteRequest,
    create_router,
)
from quicgw.core.tokens import estimate_chat_tokens, estimate_prompt_tokens
from quicgw.dashboard.routes import instrument
from quicgw.gateway.admission import ADMITTED, AdmissionQueue, Ticket
from quicgw.gateway.classify import ANONYMOUS, Classifier
from quicgw.gateway.health import DOWN, HealthState
from quicgw.gateway.http import (
    JSON,
    SSE,
    Headers,
    HTTPError,
    Responder,
    Response,
    error_body,
    error_response,
)
from quicgw.gateway.ratelimit import RateLimited, RateLimiter
from quicgw.gateway.upstream import InstantUpstream, Upstream, UpstreamError

log = logging.getLogger("quicgw.gateway")

AUTO_MODEL = "auto"  # the router picks the model (and instance)

# (method, path) -> endpoint name; endpoints marked True are classified (auth, class, deadline).
_ENDPOINTS: dict[str, tuple[str, str, bool]] = {
    "/v1/chat/completions": ("POST", "chat", True),
    "/v1/completions": ("POST", "completions", True),
    "/v1/echo": ("POST", "echo", True),
    "/v1/models": ("GET", "models", False),
    "/healthz": ("GET", "healthz", False),
}
_UPSTREAM_PATH = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(slots=True)
class Exchange:
    """One request/response, from its headers on."""

    endpoint: str
    headers: dict[bytes, bytes]
    arrival: float
    qos: RequestQoS | None = None
    error: Response | None = None
    response_started: bool = False  # a streamed response's headers are out


@dataclass(slots=True)
class Instance:
    index: int
    backend: BackendConfig
    info: InstanceInfo
    load: InstanceLoad
    queue: AdmissionQueue
    upstream: Upstream | InstantUpstream
    served_model: str
    headers: Headers  # response headers naming the instance (built once)
    health: HealthState


class InstanceDown(Exception):
    """The instance a request was waiting for went down: route the request again."""


@dataclass(slots=True)
class ParsedBody:
    data: dict[str, Any]
    model: str
    stream: bool
    input_tokens: int
    output_tokens: int
    max_tokens_given: bool


def _bad(message: str, code: str = "invalid_request") -> HTTPError:
    return HTTPError(400, message, code)


def _positive_int(data: dict, key: str) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _bad(f"'{key}' must be a positive integer, got {v!r}")
    return v


def parse_body(endpoint: str, body: bytes, default_max_tokens: int) -> ParsedBody:
    """Validate an OpenAI chat/completions body; an HTTPError(400) says what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad("request body must be a JSON object")
    model = data.get("model", AUTO_MODEL)
    if not isinstance(model, str) or not model:
        raise _bad(f"'model' must be a non-empty string, got {model!r}")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r}")
    if endpoint == "chat":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}] must be an object with a string 'role'")
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise _bad(f"messages[{i}].content must be a string or a list of parts")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or (
                            part.get("type") == "text" and not isinstance(part.get("text"), str)):
                        raise _bad(f"messages[{i}].content[{j}] must be a content part object "
                                   f"(a text part: {{\"type\": \"text\", \"text\": \"...\"}})")
        input_tokens = estimate_chat_tokens(messages)
        max_tokens = _positive_int(data, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _positive_int(data, "max_tokens")
    else:
        prompt = data.get("prompt")
        if not _valid_prompt(prompt):
            raise _bad("'prompt' must be a string, a list of strings, or token ids")
        input_tokens = estimate_prompt_tokens(prompt)
        max_tokens = _positive_int(data, "max_tokens")
    given = max_tokens is not None
    return ParsedBody(data, model, stream, input_tokens,
                      max_tokens if given else default_max_tokens, given)


def _valid_prompt(prompt: object) -> bool:
    if isinstance(prompt, str):
        return True
    if not isinstance(prompt, list) or not prompt:
        return False
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return True
    return all(isinstance(p, str) or (isinstance(p, list) and p and all(
        isinstance(t, int) and not isinstance(t, bool) for t in p)) for p in prompt)


class GatewayApp:
    """The application: classification, routing, admission, proxying. No sockets of its own
    except the upstream HTTP clients."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        gw = config.gateway
        self.config = config
        self.clock = clock
        self.max_body_bytes = gw.max_body_bytes
        self.default_max_tokens = gw.default_max_tokens
        self.echo_enabled = gw.echo_endpoint
        self.classifier = Classifier(config)
        # Priority order: the router observation fills class slots in this order.
        self.class_names = tuple(c.name for c in config.class_table)
        self.instances: list[Instance] = []
        for i, b in enumerate(config.backends):
            # Routers predict in wall time: a backend running time_scale x faster than the
            # model (an emulated one in compressed time) finishes time_scale x sooner.
            lm = latency_model(b.model, b.gpu, b.max_batch).scaled(b.time_scale)
            load = InstanceLoad()
            model = resolve_model(b.model)
            self.instances.append(Instance(
                index=i, backend=b,
                info=InstanceInfo(b.name, model.name, b.gpu, lm, dict(model.quality)),
                load=load, queue=AdmissionQueue(lm.max_batch, load),
                upstream=(InstantUpstream(b.name, b.served_model_name or model.name)
                          if b.instant else
                          Upstream(b.name, b.base_url, max_connections=lm.max_batch + 4,
                                   timeout_s=gw.upstream_timeout_s)),
                served_model=b.served_model_name or model.name,
                headers=[(b"x-quicgw-instance", b.name.encode()),
                         (b"x-quicgw-model", model.name.encode())],
                health=HealthState(gw.health_fall, gw.health_rise),
            ))
        now = clock()
        self.limiter = RateLimiter(
            {**{t.name: (t.requests_per_minute, t.tokens_per_minute) for t in config.tenants},
             ANONYMOUS: (gw.anonymous_requests_per_minute, gw.anonymous_tokens_per_minute)},
            now)
        self.timeout_factor = gw.deadline_timeout_factor
        self.draining = False  # shutting down (the transports drain; /healthz says so)
        self.cluster = ClusterView([i.info for i in self.instances],
                                   [i.load for i in self.instances])
        self.router: Router = create_router(gw.router, **gw.router_options)
        self._model_routers: dict[str, Router] = {}
        self.rates = RateEstimator()
        models = sorted({i.info.model for i in self.instances})
        self.models = models
        self._models_body = json.dumps({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "quicgw"} for m in [AUTO_MODEL, *models]
        ]}).encode()
        self._health_task: asyncio.Task | None = None
        # Prometheus metrics and the operator endpoints (/metrics, /dashboard).
        self.metrics, self.ops = instrument(self)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start background work (backend health checks)."""
        if self._health_task is None and self.instances:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        for inst in self.instances:
            await inst.upstream.aclose()

    async def check_health(self) -> None:
        timeout = self.config.gateway.health_timeout_s
        results = await asyncio.gather(*(i.upstream.check(timeout) for i in self.instances))
        now = self.clock()
        for inst, ok in zip(self.instances, results, strict=True):
            change = inst.health.probe(ok, now)
            if change is not None:
                self._health_changed(inst, change)

    def mark_down(self, inst: Instance, reason: str) -> None:
        """A request could not reach the instance: down now (probes bring it back)."""
        change = inst.health.request_failed(self.clock(), reason)
        if change is not None:
            self._health_changed(inst, change)

    def _answered(self, inst: Instance) -> None:
        change = inst.health.request_answered(self.clock())
        if change is not None:
            self._health_changed(inst, change)

    def _health_changed(self, inst: Instance, change: str) -> None:
        inst.load.healthy = inst.health.healthy
        if change == DOWN:
            log.warning("backend %s is DOWN (%s)", inst.backend.name, inst.health.reason)
            # Requests waiting for it have not started there: send them elsewhere.
            for ticket in inst.queue.waiting():
                inst.queue.release(ticket)
                if ticket.waiter is not None and not ticket.waiter.done():
                    ticket.waiter.set_exception(InstanceDown(inst.backend.name))
        else:
            log.warning("backend %s is up", inst.backend.name)

    async def _health_loop(self) -> None:
        interval = self.config.gateway.health_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_health()
            except Exception:  # a probe bug must not end health checking
                log.exception("health check failed")

    # -- the two entry points ---------------------------------------------------------------
    def open(self, method: str, path: str, headers: dict[bytes, bytes],
             now: float | None = None) -> Exchange:
        """Start an exchange at its headers: find the endpoint, classify if it needs it."""
        now = self.clock() if now is None else now
        path = path.partition("?")[0]
        spec = _ENDPOINTS.get(path)
        if spec is None and path in self.ops.endpoints and self.config.gateway.public_ops:
            spec = ("GET", self.ops.endpoints[path], False)
        if spec is None or (spec[1] == "echo" and not self.echo_enabled):
            return Exchange("", headers, now, error=error_response(
                404, f"no such endpoint: {path}", "not_found"))
        want, endpoint, classified = spec
        if method != want and not (method == "HEAD" and want == "GET"):
            return Exchange(endpoint, headers, now, error=error_response(
                405, f"{path} takes {want}, not {method}", "method_not_allowed",
                [(b"allow", want.encode())]))
        ex = Exchange(endpoint, headers, now)
        if classified:
            try:
                ex.qos = qos = self.classifier.classify(headers, now)
                if self.limiter:
                    self.limiter.request(qos.tenant, now)
            except HTTPError as e:
                ex.error = e.response()
                self.metrics.rejected(e.code)
            except RateLimited as e:
                ex.error = _rate_limited(e).response()
        return ex

    async def handle(self, ex: Exchange, body: bytes, out: Responder) -> None:
        """Serve an exchange whose body has been read; never raises for a bad request."""
        try:
            if ex.endpoint in _UPSTREAM_PATH:
                await self.metrics.observe(self._proxy, ex, body, out)
            elif ex.endpoint == "echo":
                ctype = ex.headers.get(b"content-type", b"application/octet-stream")
                await out.respond(200, [(b"content-type", ctype), *self._qos_headers(ex.qos)],
                                  body)
            elif ex.endpoint == "models":
                await out.respond(200, [(b"content-type", JSON)], self._models_body)
            elif ex.endpoint in self.ops.names:
                page = await self.ops.get(ex.endpoint)
                await out.respond(page.status, page.headers, page.body)
            elif ex.endpoint == "healthz":
                await out.respond(200, [(b"content-type", JSON)], self._health_body())
            else:  # open() never yields this; keep the error explicit anyway
                raise HTTPError(404, f"no such endpoint {ex.endpoint!r}", "not_found")
        except HTTPError as e:
            r = e.response()
            await out.respond(r.status, r.headers, r.body)

    # -- helpers -----------------------------------------------------------------------------
    def _health_body(self) -> bytes:
        return json.dumps({"status": "draining" if self.draining else "ok", "instances": [
            {"name": i.backend.name, "model": i.info.model, "healthy": i.load.healthy,
             "reason": i.health.reason, "in_flight": i.load.in_flight,
             "queued": i.load.queued}
            for i in self.instances]}).encode()

    @staticmethod
    def _qos_headers(qos: RequestQoS) -> Headers:
        return [(b"x-quicgw-class", qos.traffic_class.name.encode()),
                (b"x-quicgw-urgency", str(qos.priority.urgency).encode()),
                (b"x-quicgw-deadline-ms",
                 b"%d" % round((qos.deadline - qos.arrival) * 1000.0))]

    def _router_for(self, model: str) -> Router:
        if model == AUTO_MODEL:
            return self.router
        router = self._model_routers.get(model)
        if router is None:
            try:
                name = resolve_model(model).name
            except KeyError:
                name = None
            if name not in self.models:
                raise HTTPError(404, f"model {model!r} is not served here (served: "
                                     f"{', '.join([AUTO_MODEL, *self.models])})",
                                "model_not_found")
            router = self._model_routers[model] = create_router(f"static:{name}")
        return router

    def _route(self, ex: Exchange, req: ParsedBody, exclude: set[int]) -> Instance:
        qos = ex.qos
        tc = qos.traffic_class
        now = self.clock()
        task = ex.headers.get(b"x-task", b"").decode("latin-1") or DEFAULT_TASK
        if task not in TASKS:
            raise _bad(f"unknown task {task!r} in x-task (known: {', '.join(TASKS)})")
        rr = RouteRequest(
            class_name=tc.name, class_priority=tc.priority,
            class_index=self.classifier.class_index[tc.name],
            slack_s=qos.deadline - now, deadline_s=tc.deadline_ms / 1000.0,
            input_tokens=req.input_tokens, output_tokens=req.output_tokens,
            task=task, weight=tc.reward_weight)
        cluster = self.cluster
        cluster.now = now
        cluster.rates = self.rates.all_rates(self.class_names, now)
        saved = [(i, self.instances[i].load.healthy) for i in exclude]
        for i, _ in saved:  # instances that just failed this request: hide them for this pick
            self.instances[i].load.healthy = False
        router = self._router_for(req.model)
        try:
            index = router.route(rr, cluster)
        except NoInstanceAvailable as e:
            index = self._panic_pick(req.model, exclude)
            if index is None:
                raise HTTPError(503, f"no backend can serve this request: {e}",
                                "no_instance_available") from None
        finally:
            for i, healthy in saved:
                self.instances[i].load.healthy = healthy
        return self.instances[index]

    def _panic_pick(self, model: str, exclude: set[int]) -> int | None:
        """Every instance that could serve the request is marked down: rather than refuse it,
        try one that went down more than a health interval ago (health may be a probe behind a
        restarted engine; one that failed just now is not retried). A refused connection fails
        fast and the request tries the next; None when there is none left to try."""
        name = None if model == AUTO_MODEL else resolve_model(model).name
        stale = self.clock() - self.config.gateway.health_interval_s
        candidates = [i for i in self.instances if i.index not in exclude
                      and (name is None or i.info.model == name) and i.health.since <= stale]
        if not candidates:
            return None
        return min(candidates, key=lambda i: (i.load.in_flight + i.load.queued, i.index)).index

    async def _admit(self, inst: Instance, qos: RequestQoS) -> Ticket:
        ticket = inst.queue.submit(qos.order_key())
        if ticket.state != ADMITTED:
            ticket.waiter = asyncio.get_running_loop().create_future()
            try:
                await ticket.waiter
            except BaseException:
                self._release(inst, ticket)
                raise
        return ticket

    @staticmethod
    def _release(inst: Instance, ticket: Ticket) -> None:
        for t in inst.queue.release(ticket):
            if t.waiter is not None and not t.waiter.done():
                t.waiter.set_result(None)

    def _upstream_body(self, inst: Instance, req: ParsedBody, qos: RequestQoS) -> bytes:
        data = dict(req.data)
        data["model"] = inst.served_model
        if inst.backend.forward_priority:
            data["priority"] = qos.traffic_class.priority  # vLLM: lower is served first
        if not req.max_tokens_given:
            data["max_tokens"] = req.output_tokens
        return json.dumps(data).encode()

    async def _proxy(self, ex: Exchange, body: bytes, out: Responder) -> None:
        req = parse_body(ex.endpoint, body, self.default_max_tokens)
        qos = ex.qos
        now = self.clock()
        reserved = 0
        if self.limiter:
            try:
                reserved = self.limiter.reserve_tokens(
                    qos.tenant, req.input_tokens + req.output_tokens, now)
            except RateLimited as e:
                raise _rate_limited(e) from None
        self.rates.observe(qos.traffic_class.name, ex.arrival)
        budget_s = (qos.deadline - ex.arrival) * self.timeout_factor
        outcome = _FAILED
        try:
            async with asyncio.timeout(ex.arrival + budget_s - now):
                outcome = await self._serve(ex, req, out)
        except TimeoutError:
            message = (f"request expired: no complete answer within {budget_s:.3g} s "
                       f"({self.timeout_factor:g} x its deadline of "
                       f"{(qos.deadline - ex.arrival) * 1000:.0f} ms, queue time included)")
            if not ex.response_started:
                raise HTTPError(504, message, "deadline_expired") from None
            await _stream_error(out, 504, message, "deadline_expired")
        finally:
            if reserved:
                # Served requests pay for what they used (the reservation when the backend
                # did not say); requests that got an error pay nothing.
                if outcome == _FAILED:
                    self.limiter.give_back_tokens(qos.tenant, reserved, self.clock())
                elif outcome > 0:
                    self.limiter.give_back_tokens(
                        qos.tenant, max(0, req.output_tokens - outcome), self.clock())

    async def _serve(self, ex: Exchange, req: ParsedBody, out: Responder) -> int:
        """Route, admit, proxy, relay. Returns _FAILED if the client got an error, else the
        output tokens the backend reported using (_UNKNOWN_USAGE when it did not say)."""
        qos = ex.qos
        path = _UPSTREAM_PATH[ex.endpoint]
        tried: set[int] = set()
        while True:
            inst = self._route(ex, req, tried)
            self.metrics.routed(req.model, inst.index)
            try:
                ticket = await self._admit(inst, qos)
            except InstanceDown:
                tried.add(inst.index)  # it went down while we waited: not started there
                continue
            self.metrics.admitted(inst.index)
            try:
                payload = self._upstream_body(inst, req, qos)
                headers = [*inst.headers, *self._qos_headers(qos)]
                if req.stream:
                    return await self._stream(ex, inst, path, payload, headers, out)
                r = await inst.upstream.post(path, payload)
                self._answered(inst)
                if r.status >= 500:
                    raise UpstreamError(502, f"backend {inst.backend.name} answered "
                                             f"{r.status}: {r.body[:200]!r}")
                await out.respond(r.status, [(b"content-type", r.content_type or JSON),
                                             *headers], r.body)
                if r.status >= 400:
                    return _FAILED
                return _completion_tokens(r.body) if self.limiter else _UNKNOWN_USAGE
            except UpstreamError as e:
                if e.unreachable:
                    # Not started anywhere: mark it down (health checks bring it back) and
                    # try another instance that may serve the request.
                    self.mark_down(inst, e.message)
                    tried.add(inst.index)
                    if len(tried) < len(self.instances):
                        continue
                raise HTTPError(e.status, e.message, "upstream_error") from None
            finally:
                self._release(inst, ticket)

    async def _stream(self, ex: Exchange, inst: Instance, path: str, payload: bytes,
                      headers: Headers, out: Responder) -> int:
        upstream = inst.upstream
        response = await upstream.open_stream(path, payload)
        self._answered(inst)
        try:
            if response.status_code != 200:
                data = await upstream.read_all(response)
                if response.status_code >= 500:
                    raise UpstreamError(502, f"backend {inst.backend.name} answered "
                                             f"{response.status_code}: {data[:200]!r}")
                ctype = response.headers.get("content-type", "application/json").encode()
                await out.respond(response.status_code, [(b"content-type", ctype), *headers],
                                  data)
                return _FAILED
            await out.start(200, [(b"content-type", SSE), (b"cache-control", b"no-cache"),
                                  *headers])
            ex.response_started = True
            tail = b""
            async for chunk in upstream.relay(response):
                await out.write(chunk)
                tail = (tail + chunk)[-_DONE_TAIL:] if len(chunk) < _DONE_TAIL else chunk[-_DONE_TAIL:]
            if not tail.rstrip().endswith(_DONE):
                # The engine closed the stream cleanly but never said it was complete.
                await _stream_error(out, 502, f"backend {inst.backend.name} ended the token "
                                              f"stream without data: [DONE]", "upstream_error")
                return _FAILED
            await out.finish()
            return _UNKNOWN_USAGE
        except UpstreamError as e:
            if not ex.response_started:
                raise
            # Headers are gone: tell the client in-band, as an SSE error event, and end the
            # stream without [DONE] so no client mistakes it for a complete answer.
            await _stream_error(out, e.status, e.message, "upstream_error")
            return _FAILED
        finally:
            await upstream.close(response)


_FAILED = -1  # outcomes of _serve
_UNKNOWN_USAGE = 0
_DONE = b"data: [DONE]"
_DONE_TAIL = 32


async def _stream_error(out: Responder, status: int, message: str, code: str) -> None:
    """End a started token stream with an error event (no [DONE])."""
    await out.write(b"data: " + error_body(status, message, code) + b"\n\n")
    await out.finish()


def _rate_limited(e: RateLimited) -> HTTPError:
    header = e.retry_after_header
    return HTTPError(429, str(e), f"{e.what}_per_minute_exceeded",
                     headers=[(b"retry-after", header)] if header is not None else None)


def _completion_tokens(body: bytes) -> int:
    """Output tokens from a response's ``usage`` (_UNKNOWN_USAGE when it has none)."""
    try:
        n = json.loads(body)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return _UNKNOWN_USAGE
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else _UNKNOWN_USAGE
