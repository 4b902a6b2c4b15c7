"""The upstream adapter: OpenAI-compatible HTTP/1.1 to model servers, on h11.

vLLM, TGI, Ollama, llama.cpp and the emulated backend all serve ``POST /v1/chat/completions`` and
``/v1/completions`` over HTTP/1.1, streaming as server-sent events in a chunked body. This module
speaks exactly that, with h11 (the sans-IO HTTP/1.1 parser httpx and hypercorn use) under a small
asyncio ``Protocol`` and a keep-alive pool per backend instance, so requests to one engine never
queue behind another's connections.

Why not httpx: measured here it was most of the gateway's CPU per request (its pool re-checks
every connection against every waiting request, and a missing ``sniffio`` made httpcore pay failing
imports per lock), and httpcore 1.0.x leaks a pooled connection for good when a cancellation
lands while it closes a response, which clients resetting their streams do all the time: once
``max_connections`` had leaked, every request waited forever. Here closing a response is
synchronous (no await, so nothing can interrupt it), cancelling a request closes its connection,
and a connection goes back to the pool only after a complete response.

Failures become :class:`UpstreamError` with the status the client should see: 502 unreachable
(``unreachable=True``: the request never reached the engine, so it may go elsewhere) or broken,
504 too slow. Nothing waits forever: connecting has ``CONNECT_TIMEOUT_S`` and every read
``timeout_s``. A streamed body the client does not read fast enough stops being read from the
socket (``pause_reading``), so TCP holds the engine back instead of the gateway's memory.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

CONNECT_TIMEOUT_S = 2.0
MAX_RESPONSE_BYTES = 64 << 20  # a non-streamed answer larger than this is a broken backend
_HIGH_WATER = 256 << 10  # unread body bytes at which a connection stops reading its socket
_LOW_WATER = 64 << 10
_JSON = (b"application/json", b"application/json")
_SSE = (b"application/json", b"text/event-stream")
_USER_AGENT = b"quicgw-gateway"


class UpstreamError(Exception):
    def __init__(self, status: int, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.unreachable = unreachable  # the instance could not be reached at all


def normalise_base_url(url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` all mean the same server."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    content_type: bytes
    body: bytes


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to the backend, one request at a time."""

    __slots__ = ("h11", "transport", "events", "waiter", "error", "paused", "buffered",
                 "reused", "eof")

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.events: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.error: BaseException | None = None
        self.paused = False
        self.buffered = 0  # body bytes parsed and not yet taken
        self.reused = False
        self.eof = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError as e:  # data after a closed response: the server misbehaves
            self._fail(h11.RemoteProtocolError(str(e)))
            return
        self._parse()

    def eof_received(self) -> bool:
        self.eof = True
        try:
            self.h11.receive_data(b"")
        except RuntimeError:
            pass
        self._parse()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.error is None:
            self.error = exc or ConnectionResetError("the backend closed the connection")
        self._wake()

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self) -> None:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(ConnectionResetError("the backend closed the connection before the "
                                                "response ended") if self.eof else e)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is h11.Data:
                self.buffered += len(event.data)
            self.events.append(event)
            if type(event) is h11.ConnectionClosed:
                break
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def next_event(self, timeout: float) -> h11.Event:
        while not self.events:
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        event = self.events.popleft()
        if type(event) is h11.Data:
            self.buffered -= len(event.data)
            self.maybe_resume()
        return event

    def maybe_resume(self) -> None:
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    @property
    def alive(self) -> bool:
        return (self.transport is not None and self.error is None
                and not self.transport.is_closing() and self.h11.our_state is h11.IDLE)

    def close(self) -> None:
        self.error = self.error or ConnectionAbortedError("closed by the gateway")
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class _StaleConnection(Exception):
    pass


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamStream:
    """A response whose headers are in; its body is read with :meth:`Upstream.relay` or
    :meth:`Upstream.read_all`, and it must be :meth:`Upstream.close`\\ d."""

    __slots__ = ("status_code", "headers", "conn", "complete", "closed")

    def __init__(self, status_code: int, headers: dict[str, str], conn: _Connection) -> None:
        self.status_code = status_code
        self.headers = headers
        self.conn = conn
        self.complete = False  # the whole body arrived
        self.closed = False


class Upstream:
    """A keep-alive HTTP/1.1 connection pool to one backend instance."""

    def __init__(self, name: str, base_url: str, *, max_connections: int,
                 timeout_s: float) -> None:
        self.name = name
        self.base_url = normalise_base_url(base_url)
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend {name}: not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        self.timeout_s = timeout_s
        self.slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    # -- connections ---------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                _Connection, self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl else None), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no connection within {CONNECT_TIMEOUT_S:g} s")
            raise UpstreamError(502, f"backend {self.name} unreachable ({_describe(exc)})",
                                unreachable=True) from None
        return conn

    async def _request(self, method: bytes, path: str, body: bytes,
                       kinds: tuple[bytes, bytes], timeout: float) -> UpstreamStream:
        if self._closed:
            raise UpstreamError(502, f"backend {self.name}: the gateway is shutting down")
        await self.slots.acquire()
        try:
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive:
                    conn = candidate
                    break
                candidate.close()
            if conn is None:
                conn = await self._connect()
            else:
                conn.reused = True
            try:
                stream = await self._exchange(conn, method, path, body, kinds, timeout)
            except _StaleConnection:
                # A kept-alive connection the engine had just closed (uvicorn does after 5 s
                # idle): it never saw the request. Once more, on a new connection.
                stream = await self._exchange(await self._connect(), method, path, body, kinds,
                                              timeout)
        except BaseException:
            self.slots.release()
            raise
        return stream

    async def _exchange(self, conn: _Connection, method: bytes, path: str, body: bytes,
                        kinds: tuple[bytes, bytes], timeout: float) -> UpstreamStream:
        headers = [(b"host", self.host_header), (b"user-agent", _USER_AGENT),
                   (b"accept", kinds[1])]
        if method == b"POST":
            headers += [(b"content-type", kinds[0]), (b"content-length", b"%d" % len(body))]
        try:
            data = conn.h11.send(h11.Request(method=method, target=(self.prefix + path).encode(),
                                             headers=headers))
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            conn.transport.write(data)
            while True:
                event = await conn.next_event(timeout)
                if type(event) is h11.Response:
                    break
                if type(event) is not h11.InformationalResponse:
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except TimeoutError:
            conn.close()
            raise UpstreamError(504, f"backend {self.name} timed out (no response within "
                                     f"{timeout:g} s)") from None
        except BaseException as exc:
            conn.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if conn.reused and isinstance(exc, ConnectionError) \
                    and conn.h11.their_state is h11.SEND_RESPONSE:
                raise _StaleConnection from None
            raise UpstreamError(502, f"backend {self.name} failed ({_describe(exc)})") from None
        return UpstreamStream(event.status_code, {k.decode("latin-1"): v.decode("latin-1")
                                                  for k, v in event.headers}, conn)

    # -- the API the gateway uses -------------------------------------------------------------
    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        stream = await self._request(b"POST", path, body, _JSON, self.timeout_s)
        try:
            data = await self.read_all(stream)
        finally:
            await self.close(stream)
        return UpstreamResponse(stream.status_code,
                                stream.headers.get("content-type", "").encode(), data)

    async def open_stream(self, path: str, body: bytes) -> UpstreamStream:
        """Send a streaming request; read with :meth:`relay` (or :meth:`read_all`), then
        :meth:`close`."""
        return await self._request(b"POST", path, body, _SSE, self.timeout_s)

    async def relay(self, stream: UpstreamStream) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (raw: relaying server-sent events byte for byte
        keeps the engine's framing and costs no parse per token). A body the engine cuts off
        (connection closed before the end of the chunked body) is an UpstreamError."""
        conn = stream.conn
        while not stream.complete:
            try:
                event = await conn.next_event(self.timeout_s)
            except TimeoutError:
                raise UpstreamError(504, f"backend {self.name} timed out (no data for "
                                         f"{self.timeout_s:g} s)") from None
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                raise UpstreamError(502, f"backend {self.name} failed (incomplete response: "
                                         f"{_describe(exc)})") from None
            kind = type(event)
            if kind is h11.Data:
                data = bytes(event.data)
                # Whatever else has already arrived goes out with it: one write, not one per
                # token, when the client side is slower than the engine.
                events = conn.events
                while events and type(events[0]) is h11.Data:
                    data += bytes(events[0].data)
                    conn.buffered -= len(events.popleft().data)
                conn.maybe_resume()
                if data:
                    yield data
            elif kind is h11.EndOfMessage:
                stream.complete = True
            else:  # ConnectionClosed before the end of the body
                raise UpstreamError(502, f"backend {self.name} failed (incomplete response: "
                                         f"the connection closed)")

    async def read_all(self, stream: UpstreamStream) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.relay(stream):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise UpstreamError(502, f"backend {self.name} sent an answer over "
                                         f"{MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self, stream: UpstreamStream) -> None:
        """Done with the response: its connection goes back to the pool if the response was
        complete, else it is closed (which cancels the request at the engine). Synchronous
        inside, so a cancellation cannot interrupt it."""
        if stream.closed:
            return
        stream.closed = True
        conn = stream.conn
        if stream.complete and conn.transport is not None and conn.error is None \
                and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE \
                and not self._closed:
            conn.h11.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.close()
        self.slots.release()

    async def check(self, timeout_s: float = 1.0) -> bool:
        """Health probe: the server answers ``GET /v1/models`` (below 500) within
        ``timeout_s``, on its own connection (a full pool must not fail the probe)."""
        try:
            conn = await asyncio.wait_for(self._connect(), timeout_s)
        except (UpstreamError, TimeoutError):
            return False
        try:
            stream = await asyncio.wait_for(
                self._exchange(conn, b"GET", "/v1/models", b"", _JSON, timeout_s), timeout_s)
            ok = stream.status_code < 500
        except (UpstreamError, TimeoutError):
            ok = False
        finally:
            conn.close()
        return ok

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class _InstantStream:
    """The part of :class:`httpx.Response` the gateway uses on a streamed answer."""

    __slots__ = ("chunks",)
    status_code = 200
    headers = {"content-type": "text/event-stream"}

    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self.chunks = chunks

    async def aread(self) -> bytes:
        return b"".join(self.chunks)

    async def aclose(self) -> None:
        pass


class InstantUpstream:
    """A backend inside the gateway process that answers every request at once with a fixed
    one-token completion: no socket, no model. It measures the gateway itself
    (``python -m quicgw.bench.throughput``); configure it with ``instant = true``."""

    def __init__(self, name: str, model: str = "instant") -> None:
        self.name = name
        self.base_url = "instant:"
        self._chat = json.dumps({
            "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        self._completion = json.dumps({
            "id": "cmpl-instant", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        delta = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 0,
                 "model": model,
                 "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]}
        end = {**delta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self._chat_stream = (b"data: " + json.dumps(delta).encode() + b"\n\n",
                             b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        text = {"id": "cmpl-instant", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": "ok", "finish_reason": None}]}
        text_end = {**text, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
        self._completion_stream = (
            b"data: " + json.dumps(text).encode() + b"\n\n",
            b"data: " + json.dumps(text_end).encode() + b"\n\ndata: [DONE]\n\n")

    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        chat = path.endswith("/chat/completions")
        return UpstreamResponse(200, b"application/json",
                                self._chat if chat else self._completion)

    async def open_stream(self, path: str, body: bytes) -> _InstantStream:
        chat = path.endswith("/chat/completions")
        return _InstantStream(self._chat_stream if chat else self._completion_stream)

    async def relay(self, response: _InstantStream) -> AsyncIterator[bytes]:
        for chunk in response.chunks:
            yield chunk

    async def read_all(self, response: _InstantStream) -> bytes:
        return b"".join(response.chunks)

    @staticmethod
    async def close(response: _InstantStream) -> None:
        pass

    async def check(self, timeout_s: float = 1.0) -> bool:
        return True

    async def aclose(self) -> None:
        pass
