"""The upstream adapter: OpenAI-compatible HTTP to model servers, on httpx.

One pooled :class:`httpx.AsyncClient` per backend instance (keep-alive connections sized to the
instance's batch), so requests to one engine never queue behind another's connections. The same
calls work against vLLM, TGI, Ollama, llama.cpp and the emulated backend: they all serve
``POST /v1/chat/completions`` and ``/v1/completions``, streaming as server-sent events.

Failures become :class:`UpstreamError` with the status the client should see (502 unreachable or
broken, 504 too slow); nothing waits forever: every read has a timeout.

Cancellation (a client resets its stream, a request expires): httpcore (1.0.x) leaks the pooled
connection for good when a cancellation lands while it closes a response (its connection stays
ACTIVE; once ``max_connections`` have leaked, every request waits for a connection forever). So
bodies are read from ``response.stream`` (which, unlike ``aiter_raw``, does not close the
response inside the caller's task at its end) and responses are closed with :meth:`close`,
shielded from the caller's cancellation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

CONNECT_TIMEOUT_S = 2.0
_JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


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


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Upstream:
    """HTTP clients for one backend instance."""

    def __init__(self, name: str, base_url: str, *, max_connections: int,
                 timeout_s: float) -> None:
        self.name = name
        self.base_url = normalise_base_url(base_url)
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )

    def _error(self, exc: Exception) -> UpstreamError:
        what = _describe(exc)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return UpstreamError(502, f"backend {self.name} unreachable ({what})",
                                 unreachable=True)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(504, f"backend {self.name} timed out ({what})")
        return UpstreamError(502, f"backend {self.name} failed ({what})")

    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        response = await self._send(path, body, _JSON_HEADERS)
        try:
            data = await self.read_all(response)
        finally:
            await self.close(response)
        return UpstreamResponse(response.status_code,
                                response.headers.get("content-type", "").encode(), data)

    async def open_stream(self, path: str, body: bytes) -> httpx.Response:
        """Send a streaming request; the caller reads with :meth:`relay` (or
        :meth:`read_all`) and must :meth:`close` it."""
        return await self._send(path, body, _SSE_HEADERS)

    async def _send(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        request = self.client.build_request("POST", path, content=body, headers=headers)
        try:
            return await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    async def read_all(self, response: httpx.Response) -> bytes:
        return b"".join([chunk async for chunk in self.relay(response)])

    @staticmethod
    async def close(response: httpx.Response) -> None:
        """Close a response (return its connection to the pool), whatever happens to the
        calling task meanwhile (see the module docstring)."""
        await asyncio.shield(response.aclose())

    async def relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The raw bytes of a streamed body as they arrive.

        Raw chunks, not parsed events: relaying server-sent events byte for byte keeps the
        engine's framing and costs no parse/re-encode per token; a stream the engine cuts off
        surfaces as an httpx error (incomplete chunked body), turned into UpstreamError here.
        """
        try:
            async for chunk in response.stream:
                if chunk:
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    async def check(self, timeout_s: float = 1.0) -> bool:
        """Health probe: the server answers ``GET /v1/models``."""
        try:
            r = await self.client.get("/v1/models", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    async def aclose(self) -> None:
        await self.client.aclose()


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
