"""The async SDK: HTTP/3 requests to the gateway, many concurrent requests on one connection.

::

    async with AsyncClient("https://127.0.0.1:8443", verify=cafile, api_key="sk-...") as c:
        r = await c.chat([{"role": "user", "content": "hi"}], traffic_class="realtime")
        print(r.json()["choices"][0]["message"]["content"], r.timing.latency_s)
        async for token in c.stream_chat(messages, traffic_class="free", deadline_ms=1500):
            print(token, end="")
        echo = await c.request("POST", "/v1/echo", b"x" * 8192, traffic_class="realtime")
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.quic.configuration import QuicConfiguration

from quicgw import congestion
from quicgw.client.connection import ClientStream, H3ClientConnection, RequestRejected, Timing
from quicgw.client.sse import SSEParser
from quicgw.core.classes import DEFAULT_CLASS_TABLE, ClassTable, TrafficClass
from quicgw.core.qos import Priority, RequestQoS, parse_priority
from quicgw.scheduling import ScheduledQuicConnection

DEFAULT_TIMEOUT_S = 60.0
USER_AGENT = b"quicgw-client/0.1"
# Flow-control windows: large enough that a 100 KB answer never waits for a window update.
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 1 << 20
UDP_BUFFER_BYTES = 2 << 20  # capped by net.core.rmem_max (no privileges needed)

PriorityLike = Priority | str | None


class APIError(Exception):
    """The gateway answered with an error status (or an error event inside a stream)."""

    def __init__(self, status: int, message: str, response: Response | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.response = response


class RequestTimeout(TimeoutError):
    """The request did not complete within its timeout (its stream was cancelled)."""


class StreamError(Exception):
    """A token stream ended without its final ``[DONE]`` event."""


class Response:
    """A complete HTTP/3 response."""

    __slots__ = ("status", "headers", "content", "timing", "stream_id")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes,
                 timing: Timing, stream_id: int) -> None:
        self.status = status
        self.headers = {k.decode(): v.decode("latin-1") for k, v in headers}
        self.content = content
        self.timing = timing
        self.stream_id = stream_id

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def raise_for_status(self) -> Response:
        if not self.ok:
            raise APIError(self.status, _error_message(self.content), self)
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status} stream={self.stream_id} {len(self.content)} bytes>"


def _error_message(content: bytes) -> str:
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content[:200].decode("utf-8", "replace")


class StreamingResponse:
    """A response read as it arrives: ``status``/``headers`` at once, then the body."""

    def __init__(self, client: AsyncClient, stream: ClientStream, timeout: float | None) -> None:
        self._client = client
        self._stream = stream
        self._timeout = timeout
        self.status = stream.status
        self.headers = {k.decode(): v.decode("latin-1") for k, v in stream.headers}

    @property
    def timing(self) -> Timing:
        return self._stream.timing

    @property
    def stream_id(self) -> int:
        return self._stream.stream_id

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        stream = self._stream
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            if stream.chunks:
                chunks, stream.chunks = stream.chunks, []
                for chunk in chunks:
                    yield chunk
                continue
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                return
            await self._client._wait(stream, deadline)

    async def aiter_events(self) -> AsyncIterator[str]:
        """The ``data`` of each server-sent event."""
        parser = SSEParser()
        async for chunk in self.aiter_bytes():
            for data in parser.feed(chunk):
                yield data

    def reprioritise(self, priority: Priority | str) -> None:
        """Send an RFC 9218 PRIORITY_UPDATE for this request (the gateway applies it, never
        above the class's urgency) and apply it to this side's scheduler."""
        conn = self._stream.conn
        if conn is None or conn.terminated or self._stream.ended:
            return
        conn.h3.send_priority_update(self._stream.stream_id, priority)
        conn.transmit_soon()

    async def aread(self) -> bytes:
        return b"".join([c async for c in self.aiter_bytes()])

    async def aclose(self) -> None:
        """Stop receiving: cancels the request at the gateway if it is still running."""
        self._client._cancel(self._stream)

    async def _await_end(self, grace_s: float = 2.0) -> None:
        """The answer is complete (``[DONE]``): wait briefly for the stream's end rather than
        cancelling a request the server has already finished (a reset there would cancel its
        clean-up). A server that never ends the stream is cancelled after ``grace_s``."""
        stream = self._stream
        end = time.monotonic() + grace_s
        while not stream.ended and time.monotonic() < end:
            try:
                await asyncio.wait_for(stream.waiter(), end - time.monotonic())
            except TimeoutError:
                break
        stream.chunks = []

    async def __aenter__(self) -> StreamingResponse:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class TokenStream:
    """Tokens of a streamed chat/completion as an async iterator.

    ``async for token in client.stream_chat(...)`` or, to be sure the request is cancelled when
    you stop early, ``async with client.stream_chat(...) as tokens: async for t in tokens``.
    After the iteration: :attr:`response` (status, headers), :attr:`finish_reason`,
    :attr:`timing` (first token = ``timing.first_byte``).
    """

    def __init__(self, client: AsyncClient, path: str, body: dict, kwargs: dict,
                 chat: bool) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._kwargs = kwargs
        self._chat = chat
        self.response: StreamingResponse | None = None
        self.finish_reason: str | None = None
        self.tokens = 0

    @property
    def timing(self) -> Timing | None:
        return self.response.timing if self.response else None

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.response is not None:
            await self.response.aclose()

    async def __aiter__(self) -> AsyncIterator[str]:
        self.response = r = await self._client.stream(
            "POST", self._path, self._body, **self._kwargs)
        try:
            if r.status >= 400:
                content = await r.aread()
                raise APIError(r.status, _error_message(content))
            async for data in r.aiter_events():
                if data == "[DONE]":
                    await r._await_end()
                    return
                event = json.loads(data)
                if "error" in event:
                    err = event["error"]
                    raise APIError(int(err.get("status", 502)), str(err.get("message", err)))
                for choice in event.get("choices") or ():
                    if self._chat:
                        text = (choice.get("delta") or {}).get("content")
                    else:
                        text = choice.get("text")
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                    if text:
                        self.tokens += 1
                        yield text
            raise StreamError("the token stream ended without [DONE]")
        finally:
            await r.aclose()


def _host_port(base_url: str | None, host: str | None, port: int | None) -> tuple[str, int]:
    if base_url is not None:
        parts = urlsplit(base_url if "//" in base_url else f"https://{base_url}")
        if parts.scheme not in ("https", ""):
            raise ValueError(f"HTTP/3 needs an https:// URL, got {base_url!r}")
        if parts.hostname is None:
            raise ValueError(f"no host in {base_url!r}")
        return parts.hostname, parts.port or 443
    if host is None:
        raise ValueError("give base_url or host (and port)")
    return host, port or 443


class AsyncClient:
    """HTTP/3 client of the gateway (one QUIC connection, many concurrent request streams).

    ``verify``: True (system CAs), False (no verification: development only), or the path of a
    CA file (e.g. the gateway's development CA, ``Gateway.cafile``). ``scheduler`` names the
    packet scheduler of this side of the connection (it orders uploads). ``timeout`` bounds each
    request (seconds; None for no limit) unless a request gives its own. ``congestion_control``
    names this side's QUIC congestion controller (:mod:`quicgw.congestion`: ``bbr``, the
    default, or aioquic's ``reno`` / ``cubic``).
    """

    def __init__(self, base_url: str | None = None, *, host: str | None = None,
                 port: int | None = None, scheduler: str = "rr", verify: bool | str = True,
                 api_key: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_S,
                 server_name: str | None = None, classes: ClassTable | None = None,
                 connect_timeout: float = 10.0,
                 congestion_control: str = congestion.DEFAULT) -> None:
        self.host, self.port = _host_port(base_url, host, port)
        self.scheduler = scheduler
        self.congestion_control = congestion.check_algorithm(congestion_control)
        self.verify = verify
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.server_name = server_name or self.host
        self.classes = classes or DEFAULT_CLASS_TABLE
        self._authority = (f"[{self.host}]" if ":" in self.host else self.host).encode() + \
            f":{self.port}".encode()
        self._base_headers: list[tuple[bytes, bytes]] = [(b"user-agent", USER_AGENT)]
        if api_key:
            self._base_headers.append((b"authorization", f"Bearer {api_key}".encode()))
        self._conn: H3ClientConnection | None = None
        self._connecting: asyncio.Lock | None = None
        # Connections the server is draining (GOAWAY): their requests finish there.
        self._retired: set[H3ClientConnection] = set()

    # -- connection ----------------------------------------------------------------------------
    def _quic_configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN),
                                   server_name=self.server_name, max_data=MAX_DATA,
                                   max_stream_data=MAX_STREAM_DATA,
                                   congestion_control_algorithm=self.congestion_control)
        if self.verify is False:
            config.verify_mode = ssl.CERT_NONE
        elif isinstance(self.verify, str):
            config.load_verify_locations(cafile=self.verify)
        return config

    async def connect(self) -> None:
        """Open the QUIC connection now (otherwise the first request does)."""
        await self._connection()

    async def _connection(self) -> H3ClientConnection:
        conn = self._conn
        if conn is not None and not conn.going_away:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.going_away:
                return self._conn
            if self._conn is not None:
                old, self._conn = self._conn, None
                if old.terminated or not old.streams:
                    await old.aclose()
                else:  # GOAWAY: let its requests finish; closed when they have
                    self._retire(old)
            self._conn = await self._open()
            return self._conn

    def _retire(self, conn: H3ClientConnection) -> None:
        self._retired.add(conn)

        def done(_: asyncio.Future) -> None:  # the server closed it after draining
            self._retired.discard(conn)
            conn.release()

        conn.closed.add_done_callback(done)

    async def _open(self) -> H3ClientConnection:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        quic = ScheduledQuicConnection(configuration=self._quic_configuration(),
                                       scheduler=self.scheduler)
        local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        transport, conn = await loop.create_datagram_endpoint(
            lambda: H3ClientConnection(quic), local_addr=local, family=family)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a busy client must not drop the gateway's bursts either
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
                except OSError:
                    pass
        conn.connect(addr)
        try:
            await asyncio.wait_for(asyncio.shield(conn.connected), self.connect_timeout)
        except BaseException as e:
            await conn.aclose(timeout=0.2)
            if isinstance(e, asyncio.TimeoutError):
                raise ConnectionError(
                    f"no QUIC handshake with {self.host}:{self.port} within "
                    f"{self.connect_timeout:.0f} s (is the gateway listening on UDP?)") from None
            raise
        return conn

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()
        for conn in list(self._retired):
            await conn.aclose()
        self._retired.clear()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    @property
    def connection(self) -> H3ClientConnection | None:
        return self._conn

    # -- requests -------------------------------------------------------------------------------
    def _qos(self, traffic_class: str | None, deadline_ms: float | None,
             priority: Priority | None, now: float) -> RequestQoS:
        if traffic_class is None:
            tc = max(self.classes, key=lambda c: (c.priority, c.name))
        elif traffic_class in self.classes:
            tc = self.classes[traffic_class]
        else:
            lowest = max((c.priority for c in self.classes), default=0)
            tc = TrafficClass(traffic_class, priority=lowest + 1,
                              deadline_ms=deadline_ms or DEFAULT_TIMEOUT_S * 1000)
        deadline = now + (deadline_ms if deadline_ms is not None else tc.deadline_ms) / 1000.0
        return RequestQoS(tc, now, deadline, priority or Priority(tc.urgency, False), "client")

    async def _send(self, method: str, path: str, body: Any, headers: Mapping[str, str] | None,
                    traffic_class: str | None, deadline_ms: float | None,
                    priority: PriorityLike) -> tuple[H3ClientConnection, ClientStream]:
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            content_type = b"application/json"
        elif isinstance(body, str):
            body = body.encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            body = body or b""
            content_type = b"application/octet-stream"
        conn = await self._connection()
        started = time.monotonic()
        h = [(b":method", method.encode()), (b":scheme", b"https"),
             (b":authority", self._authority), (b":path", path.encode()), *self._base_headers]
        if traffic_class is not None:
            h.append((b"x-traffic-class", traffic_class.encode()))
        if deadline_ms is not None:
            h.append((b"x-deadline-ms", f"{deadline_ms:g}".encode()))
        prio = parse_priority(priority) if isinstance(priority, str) else priority
        if prio is not None:
            h.append((b"priority", prio.header_value().encode()))
        user_ctype = False
        if headers:
            for k, v in headers.items():
                k = k.lower()
                user_ctype = user_ctype or k == "content-type"
                h.append((k.encode(), v.encode()))
        if body:
            if not user_ctype:
                h.append((b"content-type", content_type))
            h.append((b"content-length", str(len(body)).encode()))
        quic = conn.quic
        stream_id = quic.get_next_available_stream_id()
        stream = ClientStream(stream_id, Timing(started))
        stream.conn = conn
        conn.streams[stream_id] = stream
        if traffic_class is not None or deadline_ms is not None or prio is not None:
            quic.set_stream_qos(stream_id, self._qos(traffic_class, deadline_ms, prio, started))
        conn.h3.send_headers(stream_id, h, end_stream=not body)
        if body:
            conn.h3.send_data(stream_id, body, end_stream=True)
        stream.timing.sent = time.monotonic()
        conn.transmit_soon()
        return conn, stream

    async def _wait(self, stream: ClientStream, deadline: float | None) -> None:
        if deadline is None:
            await stream.waiter()
            return
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(stream.waiter(), left)
        except TimeoutError:
            self._cancel(stream)
            raise RequestTimeout(f"request on stream {stream.stream_id} timed out") from None

    def _cancel(self, stream: ClientStream) -> None:
        """Abandon a request: reset our side and ask the server to stop sending."""
        conn = stream.conn
        if stream.ended or conn is None or conn.terminated:
            return
        stream.ended = True
        conn.streams.pop(stream.stream_id, None)
        try:
            conn.quic.reset_stream(stream.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            conn.quic.stop_stream(stream.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        except (ValueError, AssertionError):
            pass
        conn.transmit_soon()

    def _timeout(self, timeout: float | None | type[...]) -> float | None:
        return self.timeout if timeout is ... else timeout

    async def request(self, method: str, path: str, body: Any = None,
                      headers: Mapping[str, str] | None = None, *,
                      traffic_class: str | None = None, deadline_ms: float | None = None,
                      priority: PriorityLike = None, timeout: Any = ...) -> Response:
        """Send a request and read the whole response (any status: check ``.ok``).

        A request the server did not process (GOAWAY, H3_REQUEST_REJECTED) is sent again once,
        on a new connection."""
        timeout = self._timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(2):
            conn, stream = await self._send(method, path, body, headers, traffic_class,
                                            deadline_ms, priority)
            try:
                while not stream.ended:
                    await self._wait(stream, deadline)
            except asyncio.CancelledError:
                self._cancel(stream)
                raise
            if not (isinstance(stream.error, RequestRejected) and attempt == 0):
                break
        if stream.error is not None:
            raise stream.error
        chunks = stream.chunks
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Response(stream.status or 0, stream.headers, content, stream.timing,
                        stream.stream_id)

    async def stream(self, method: str, path: str, body: Any = None,
                     headers: Mapping[str, str] | None = None, *,
                     traffic_class: str | None = None, deadline_ms: float | None = None,
                     priority: PriorityLike = None, timeout: Any = ...) -> StreamingResponse:
        """Send a request and return once the response headers are in; read the body from the
        returned :class:`StreamingResponse` (``timeout`` then bounds the whole exchange)."""
        timeout = self._timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(2):
            conn, stream = await self._send(method, path, body, headers, traffic_class,
                                            deadline_ms, priority)
            try:
                while stream.status is None and not stream.ended:
                    await self._wait(stream, deadline)
            except asyncio.CancelledError:
                self._cancel(stream)
                raise
            if not (isinstance(stream.error, RequestRejected) and attempt == 0):
                break
        if stream.status is None:
            raise stream.error or ConnectionError(
                f"stream {stream.stream_id} ended without a response")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return StreamingResponse(self, stream, left)

    # -- OpenAI-style helpers ----------------------------------------------------------------
    async def chat(self, messages: Sequence[Mapping[str, Any]], *, model: str = "auto",
                   max_tokens: int | None = None, traffic_class: str | None = None,
                   deadline_ms: float | None = None, priority: PriorityLike = None,
                   timeout: Any = ..., **params: Any) -> Response:
        """``POST /v1/chat/completions``; raises :class:`APIError` on an error status."""
        body = {"model": model, "messages": list(messages), **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        r = await self.request("POST", "/v1/chat/completions", body,
                               traffic_class=traffic_class, deadline_ms=deadline_ms,
                               priority=priority, timeout=timeout)
        return r.raise_for_status()

    async def completions(self, prompt: str | list, *, model: str = "auto",
                          max_tokens: int | None = None, traffic_class: str | None = None,
                          deadline_ms: float | None = None, priority: PriorityLike = None,
                          timeout: Any = ..., **params: Any) -> Response:
        """``POST /v1/completions``; raises :class:`APIError` on an error status."""
        body = {"model": model, "prompt": prompt, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        r = await self.request("POST", "/v1/completions", body, traffic_class=traffic_class,
                               deadline_ms=deadline_ms, priority=priority, timeout=timeout)
        return r.raise_for_status()

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], *, model: str = "auto",
                    max_tokens: int | None = None, traffic_class: str | None = None,
                    deadline_ms: float | None = None, priority: PriorityLike = None,
                    timeout: Any = ..., **params: Any) -> TokenStream:
        """Streamed chat completion: an async iterator of content tokens."""
        body = {"model": model, "messages": list(messages), "stream": True, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        kwargs = {"traffic_class": traffic_class, "deadline_ms": deadline_ms,
                  "priority": priority, "timeout": timeout}
        return TokenStream(self, "/v1/chat/completions", body, kwargs, chat=True)

    def stream_completions(self, prompt: str | list, *, model: str = "auto",
                           max_tokens: int | None = None, traffic_class: str | None = None,
                           deadline_ms: float | None = None, priority: PriorityLike = None,
                           timeout: Any = ..., **params: Any) -> TokenStream:
        body = {"model": model, "prompt": prompt, "stream": True, **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        kwargs = {"traffic_class": traffic_class, "deadline_ms": deadline_ms,
                  "priority": priority, "timeout": timeout}
        return TokenStream(self, "/v1/completions", body, kwargs, chat=False)
