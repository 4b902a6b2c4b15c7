"""The emulated backend: an OpenAI-compatible HTTP server whose timing follows the shared
latency model.

One :class:`~quicgw.core.latency.BatchEngine` per server is stepped in real time by one asyncio
task: ``start_iteration`` -> sleep until the iteration's end -> ``finish_iteration`` -> one token
to every request in the batch. Every duration comes from ``quicgw.core.catalog.latency_model``
(scaled by ``time_scale`` with ``LatencyModel.scaled``); nothing here computes a latency.

The step loop keeps the engine's clock exact even when the event loop wakes late (timers have
millisecond granularity and the machine may be busy): the next iteration starts at the previous
one's *end*, not at the moment the task woke, and iterations that are already over are run back
to back (catch-up). Tokens may then reach sockets late, but the model timeline and the server
timings it reports stay those of the latency model. Arrivals wait in a queue and enter the engine
only at the first iteration boundary at or after their arrival time, so catch-up never admits a
request before it arrived.

HTTP server: a small asyncio ``Protocol`` around h11 (the sans-IO HTTP/1.1 parser httpx and
hypercorn use) instead of hypercorn itself. Why: a streaming request here is just an object the
step loop writes tokens to. Under ASGI every stream would be a coroutine woken once per token
(32 task wake-ups per iteration at full batch, dict messages, hypercorn's per-connection tasks);
with a protocol the step loop writes each token's bytes straight to the transport, and an idle
connection costs one protocol object and no task, so ~1,000 concurrent streams on loopback are
cheap (measured here: 1,000 concurrent streams of 100 tokens, 100,000 SSE events, cost the
server 1.6 s of CPU and 43 MB of resident memory). The price is that only HTTP/1.1 is spoken (as
vLLM's own server does).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import secrets
import time
from typing import Any

import h11

from quicgw.backends.openai_api import (
    APIError,
    GenerationRequest,
    ResponseFormat,
    json_body,
    parse_generation,
    usage,
)
from quicgw.core.catalog import SIZE_ALIASES, latency_model, resolve_gpu, resolve_model
from quicgw.core.latency import POLICIES, BatchEngine, EngineRequest, Iteration

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # output tokens when a request gives neither max_tokens nor max_completion_tokens
MAX_BODY_BYTES = 16 << 20  # long-input prompts of ~100k tokens fit
MAX_HEADER_BYTES = 64 << 10
# Shortest sleep of the step loop. Event-loop timers have ~1 ms granularity; asking for less
# makes the loop spin. Shorter iterations (high time scales) are run in catch-up instead.
MIN_SLEEP_S = 0.001
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class _Generation:
    """One chat/completions request: its engine request and the connection it answers on."""

    __slots__ = ("backend", "conn", "request", "engine_request", "fmt", "submitted", "cancelled")

    def __init__(self, backend: EmulatedBackend, conn: _HTTPConnection,
                 request: GenerationRequest, model_name: str, arrival: float) -> None:
        self.backend = backend
        self.conn = conn
        self.request = request
        self.engine_request = EngineRequest(
            rid=self, input_tokens=request.input_tokens, output_tokens=request.output_tokens,
            arrival=arrival, priority=request.priority)
        prefix = "chatcmpl-" if request.kind == "chat" else "cmpl-"
        self.fmt = ResponseFormat(request.kind, prefix + secrets.token_hex(12), int(time.time()),
                                  model_name, request.include_usage)
        self.submitted = False
        self.cancelled = False

    def cancel(self) -> None:
        """The client went away: free the batch slot (or the queue place) at once."""
        if self.cancelled or self.engine_request.finished is not None:
            return
        self.cancelled = True
        if self.submitted:
            self.backend.engine.cancel(self.engine_request)
        self.backend.stats["cancelled"] += 1

    def on_token(self) -> None:
        """Called by the step loop at the end of each iteration this request ran in."""
        r = self.engine_request
        index = r.generated - 1
        done = r.finished is not None
        if done:
            # Detach first: finishing the response may start the connection's next request.
            self.conn.generation = None
        if self.request.stream:
            data = self.fmt.first_chunk() if index == 0 else b""
            if done:
                data += self.fmt.last_chunks(index, self._usage(), self.timings())
            else:
                data += self.fmt.token_chunk(index)
            self.conn.send_data(data)
            if done:
                self.conn.end_response()
        elif done:
            timings = self.timings()
            body = self.fmt.full_response(r.generated, self._usage(), timings)
            self.conn.send_response(200, body, extra_headers=[
                (b"x-queue-ms", b"%.3f" % timings["queue_ms"]),
                (b"x-ttft-ms", b"%.3f" % timings["ttft_ms"]),
                (b"x-e2el-ms", b"%.3f" % timings["e2el_ms"]),
            ])

    def _usage(self) -> dict:
        return usage(self.engine_request.input_tokens, self.engine_request.generated)

    def timings(self) -> dict[str, float]:
        """Server-side timings of a finished request, in model milliseconds."""
        r = self.engine_request
        to_model_ms = 1000.0 * self.backend.time_scale
        return {
            "time_scale": self.backend.time_scale,
            "queue_ms": (r.admitted - r.arrival) * to_model_ms,
            "ttft_ms": (r.first_token - r.arrival) * to_model_ms,
            "tpot_ms": ((r.finished - r.first_token) / (r.generated - 1) * to_model_ms
                        if r.generated > 1 else 0.0),
            "e2el_ms": (r.finished - r.arrival) * to_model_ms,
        }


class _HTTPConnection(asyncio.Protocol):
    """One HTTP/1.1 connection (keep-alive; pipelined requests are answered in order)."""

    def __init__(self, backend: EmulatedBackend) -> None:
        self.backend = backend
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.generation: _Generation | None = None
        self._handling = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._handle_events()

    # eof_received is not overridden: a client that half-closes is treated as gone, so the
    # transport closes and connection_lost cancels its request.

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend._connections.discard(self)
        self.transport = None
        if self.generation is not None:
            self.generation.cancel()
            self.generation = None

    # -- requests -----------------------------------------------------------------------------
    def _handle_events(self) -> None:
        if self._handling:  # re-entered from a response sent while handling; the loop goes on
            return
        self._handling = True
        try:
            while self.transport is not None:
                try:
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as e:
                    self._fail(400, f"malformed HTTP request: {e}")
                    return
                if event is h11.NEED_DATA:
                    return
                if event is h11.PAUSED:
                    # A response is in progress. Reading is NOT paused: a paused socket would
                    # not notice the client leaving, and leaving must cancel the request.
                    # Pipelined bytes wait in h11's buffer, within a limit.
                    if len(self.h11.trailing_data[0]) > MAX_BODY_BYTES:
                        self._close()
                    return
                if isinstance(event, h11.Request):
                    self.request = event
                    self.body.clear()
                    if self.h11.they_are_waiting_for_100_continue:  # curl does, for bodies > 1 KB
                        self.transport.write(self.h11.send(
                            h11.InformationalResponse(status_code=100, headers=[])))
                elif isinstance(event, h11.Data):
                    self.body += event.data
                    if len(self.body) > MAX_BODY_BYTES:
                        self._fail(413, f"request body larger than {MAX_BODY_BYTES} bytes")
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.backend._dispatch(self, self.request, bytes(self.body))
                    self.body.clear()
                elif isinstance(event, h11.ConnectionClosed):
                    self._close()
                    return
        finally:
            self._handling = False

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse, then close (the stream is out of sync)."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self.send_response(status, APIError(status, message).body(),
                                   extra_headers=[(b"connection", b"close")])
            except h11.LocalProtocolError:
                pass
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- responses (called by the backend and the step loop) ---------------------------------
    def _headers(self, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> list:
        b = self.backend
        return [
            (b"content-type", content_type),
            (b"server", b"quicgw-emulated"),
            (b"x-time-scale", b"%g" % b.time_scale),
            (b"x-running", b"%d" % b.engine.n_running),
            (b"x-waiting", b"%d" % b.n_waiting),
            *extra,
        ]

    def send_response(self, status: int, body: bytes, *, content_type: bytes = b"application/json",
                      extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
        if self.transport is None:
            return
        headers = self._headers(content_type, [*extra_headers,
                                               (b"content-length", b"%d" % len(body))])
        out = self.h11.send(h11.Response(status_code=status, headers=headers,
                                         reason=_REASONS.get(status, b"")))
        out += self.h11.send(h11.Data(data=body)) if body else b""
        out += self.h11.send(h11.EndOfMessage())
        self.transport.write(out)
        self._response_done()

    def start_stream(self) -> None:
        if self.transport is None:
            return
        headers = self._headers(b"text/event-stream; charset=utf-8",
                                [(b"cache-control", b"no-cache")])
        self.transport.write(self.h11.send(h11.Response(status_code=200, headers=headers,
                                                        reason=b"OK")))

    def send_data(self, data: bytes) -> None:
        # No write-side flow control: a token is tens of bytes and the output length is bounded,
        # so a client that reads slowly costs at most one response's worth of buffer.
        if self.transport is not None and data:
            self.transport.write(self.h11.send(h11.Data(data=data)))

    def end_response(self) -> None:
        if self.transport is not None:
            self.transport.write(self.h11.send(h11.EndOfMessage()))
            self._response_done()

    def _response_done(self) -> None:
        if h11.MUST_CLOSE in (self.h11.our_state, self.h11.their_state):
            self._close()
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:  # the client has not finished sending; cannot reuse
            self._close()
            return
        self._handle_events()  # a pipelined request may be waiting in h11's buffer


class EmulatedBackend:
    """An emulated model instance serving the OpenAI API over HTTP/1.1.

    Use it in-process as an async context manager::

        async with EmulatedBackend("llama-3.1-8b", "a100-80gb", port=0, time_scale=10) as b:
            httpx.post(f"{b.url}/v1/chat/completions", json=...)

    ``port=0`` picks a free port (read it back from ``b.port`` / ``b.url``). For a separate
    process use :class:`quicgw.backends.process.BackendProcess`.
    """

    def __init__(self, model: str, gpu: str = "a100-80gb", *, host: str = "127.0.0.1",
                 port: int = 0, max_batch: int | None = None, queue_policy: str = "fcfs",
                 time_scale: float = 1.0, served_model_name: str | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if queue_policy not in POLICIES:
            raise ValueError(f"unknown queue policy {queue_policy!r} (choose from {', '.join(POLICIES)})")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        try:
            self.catalog_model = resolve_model(model).name
            self.gpu = resolve_gpu(gpu).name
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        self.host = host
        self._requested_port = port
        self.queue_policy = queue_policy
        self.time_scale = float(time_scale)
        self.served_model_name = served_model_name or self.catalog_model
        self.default_max_tokens = default_max_tokens
        # The model-time latency model (what the catalog says) and the one the engine runs on
        # (the same, time_scale times faster, so the engine's clock is the wall clock).
        self.latency = latency_model(self.catalog_model, self.gpu, max_batch)
        self.engine = BatchEngine(self.latency.scaled(self.time_scale), policy=queue_policy)
        size = next(s for s, n in SIZE_ALIASES.items() if n == self.catalog_model)
        self.accepted_model_names = frozenset({self.catalog_model, size, self.served_model_name})
        self.stats = collections.Counter(requests=0, completed=0, cancelled=0, rejected=0,
                                         generated_tokens=0)
        self._arrivals: collections.deque[_Generation] = collections.deque()
        self._wake = asyncio.Event()
        self._connections: set[_HTTPConnection] = set()
        self._server: asyncio.Server | None = None
        self._stepper: asyncio.Task | None = None
        self._clock = time.monotonic  # the engine's clock; loop.time() is ms-coarse on uvloop
        self._t0 = self._clock()
        self._started_at = int(time.time())
        self._lag_s = 0.0
        self._max_lag_s = 0.0
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("backend already started")
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._server = await loop.create_server(
            lambda: _HTTPConnection(self), self.host, self._requested_port,
            backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = self._clock()
        self._started_at = int(time.time())
        self._stepper = asyncio.create_task(self._step_loop(), name="emulated-backend-stepper")
        self._stepper.add_done_callback(self._stepper_done)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        self._connections.clear()
        if self._stepper is not None:
            self._stepper.cancel()
            try:
                await self._stepper
            except asyncio.CancelledError:
                pass
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> EmulatedBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("backend not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _stepper_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("emulated backend step loop died", exc_info=task.exception())

    # -- load ---------------------------------------------------------------------------------
    @property
    def n_waiting(self) -> int:
        return self.engine.n_waiting + sum(1 for g in self._arrivals if not g.cancelled)

    def model_time_s(self) -> float:
        return (self._clock() - self._t0) * self.time_scale

    def load(self) -> dict[str, Any]:
        """The instance's load, as ``GET /load`` returns it."""
        return {
            "model": self.served_model_name,
            "catalog_model": self.catalog_model,
            "gpu": self.gpu,
            "queue_policy": self.queue_policy,
            "time_scale": self.time_scale,
            "max_batch": self.latency.max_batch,
            "kv_capacity_tokens": self.latency.kv_capacity_tokens,
            "running": self.engine.n_running,
            "waiting": self.n_waiting,
            "kv_used_tokens": sum(r.kv_tokens for r in self.engine.running),
            "model_time_s": self.model_time_s(),
            **self.stats,
            "lag_wall_ms": {"last": self._lag_s * 1000, "max": self._max_lag_s * 1000},
        }

    # -- the step loop ------------------------------------------------------------------------
    async def _step_loop(self) -> None:
        engine, clock, arrivals = self.engine, self._clock, self._arrivals
        boundary = clock()  # engine time at which the next iteration may start
        while True:
            if not engine.busy:
                while not arrivals:
                    self._wake.clear()
                    await self._wake.wait()
                boundary = max(boundary, arrivals[0].engine_request.arrival)
            while arrivals and arrivals[0].engine_request.arrival <= boundary:
                gen = arrivals.popleft()
                if not gen.cancelled:
                    engine.submit(gen.engine_request)
                    gen.submitted = True
            it = engine.start_iteration(boundary)
            if it is None:  # everything that arrived was cancelled meanwhile
                continue
            delay = it.end - clock()
            # When behind, still yield once per iteration so sockets are served during catch-up.
            await asyncio.sleep(max(delay, MIN_SLEEP_S) if delay > 0 else 0)
            engine.finish_iteration()
            self._lag_s = max(0.0, clock() - it.end)
            self._max_lag_s = max(self._max_lag_s, self._lag_s)
            self._deliver(it)
            boundary = it.end

    def _deliver(self, it: Iteration) -> None:
        tokens = 0
        for r in it.batch:
            if r.cancelled:
                continue
            tokens += 1
            gen: _Generation = r.rid
            try:
                gen.on_token()
            except Exception:  # one broken connection must not stop the instance
                log.exception("delivering a token failed; dropping the request")
                gen.cancel()
                gen.conn._close()
                continue
            if r.finished is not None:
                self.stats["completed"] += 1
        self.stats["generated_tokens"] += tokens

    # -- HTTP routing -------------------------------------------------------------------------
    def _dispatch(self, conn: _HTTPConnection, request: h11.Request, body: bytes) -> None:
        method = request.method
        path = request.target.split(b"?", 1)[0]
        try:
            handler = _ROUTES.get(path)
            if handler is None:
                raise APIError(404, f"no route {path.decode('latin-1')}; this server offers "
                               + ", ".join(f"{m.decode()} {p.decode()}"
                                           for p, (m, _) in _ROUTES.items()),
                               code="not_found", type="not_found_error")
            want, fn = handler
            if method != want:
                raise APIError(405, f"{path.decode('latin-1')} takes {want.decode()}, not {method.decode()}",
                               code="method_not_allowed")
            fn(self, conn, body)
        except APIError as e:
            self.stats["rejected"] += 1
            conn.send_response(e.status, e.body())

    def _health(self, conn: _HTTPConnection, body: bytes) -> None:
        conn.send_response(200, b"", content_type=b"text/plain")

    def _models(self, conn: _HTTPConnection, body: bytes) -> None:
        conn.send_response(200, json_body({"object": "list", "data": [{
            "id": self.served_model_name, "object": "model", "created": self._started_at,
            "owned_by": "quicgw", "root": self.catalog_model,
            "max_model_len": self.latency.kv_capacity_tokens,
            "quicgw": {"gpu": self.gpu, "max_batch": self.latency.max_batch,
                       "queue_policy": self.queue_policy, "time_scale": self.time_scale},
        }]}))

    def _load(self, conn: _HTTPConnection, body: bytes) -> None:
        conn.send_response(200, json_body(self.load()))

    def _metrics(self, conn: _HTTPConnection, body: bytes) -> None:
        conn.send_response(200, prometheus_text(self),
                           content_type=b"text/plain; version=0.0.4; charset=utf-8")

    def _chat(self, conn: _HTTPConnection, body: bytes) -> None:
        self._generate(conn, "chat", body)

    def _completions(self, conn: _HTTPConnection, body: bytes) -> None:
        self._generate(conn, "completion", body)

    def _generate(self, conn: _HTTPConnection, kind: str, body: bytes) -> None:
        req = parse_generation(kind, body, self.default_max_tokens)
        if req.model is not None and req.model not in self.accepted_model_names:
            raise APIError(404, f"The model `{req.model}` does not exist on this server; it serves "
                           f"{', '.join(sorted(self.accepted_model_names))}",
                           code="model_not_found", param="model")
        kv = req.input_tokens + req.output_tokens
        if kv > self.latency.kv_capacity_tokens:
            raise APIError(400, f"this request needs {kv} tokens of KV cache ({req.input_tokens} "
                           f"prompt + {req.output_tokens} output); the instance holds "
                           f"{self.latency.kv_capacity_tokens}", code="context_length_exceeded")
        gen = _Generation(self, conn, req, self.served_model_name, self._clock())
        conn.generation = gen
        self.stats["requests"] += 1
        if req.stream:
            conn.start_stream()
        self._arrivals.append(gen)
        self._wake.set()


_ROUTES: dict[bytes, tuple[bytes, Any]] = {
    b"/v1/chat/completions": (b"POST", EmulatedBackend._chat),
    b"/v1/completions": (b"POST", EmulatedBackend._completions),
    b"/v1/models": (b"GET", EmulatedBackend._models),
    b"/health": (b"GET", EmulatedBackend._health),
    b"/load": (b"GET", EmulatedBackend._load),
    b"/metrics": (b"GET", EmulatedBackend._metrics),
}


def prometheus_text(backend: EmulatedBackend) -> bytes:
    """Load in Prometheus text format under vLLM's metric names, so a router that reads a real
    vLLM's ``/metrics`` reads ours the same way."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    name = backend.served_model_name

    class _Collector:
        def collect(self):
            load = backend.load()
            for metric, doc, value in (
                ("vllm:num_requests_running", "Requests in the running batch.", load["running"]),
                ("vllm:num_requests_waiting", "Requests waiting to be admitted.", load["waiting"]),
            ):
                g = GaugeMetricFamily(metric, doc, labels=["model_name"])
                g.add_metric([name], value)
                yield g
            for metric, doc, value in (
                ("vllm:generation_tokens", "Generated tokens.", load["generated_tokens"]),
                ("vllm:request_success", "Finished requests.", load["completed"]),
            ):
                c = CounterMetricFamily(metric, doc, labels=["model_name"])
                c.add_metric([name], value)
                yield c

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)
