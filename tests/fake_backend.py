"""A tiny OpenAI-compatible backend for gateway tests: answers at once (or after a per-token
delay), records what it received, and can be told to fail. Served by hypercorn on a real
loopback TCP socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config


class FakeBackend:
    def __init__(self, model: str = "llama-3.1-8b", *, token_delay_s: float = 0.0,
                 die_after_tokens: int | None = None) -> None:
        self.model = model
        self.token_delay_s = token_delay_s
        self.die_after_tokens = die_after_tokens  # close the stream abruptly after N tokens
        self.received: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeBackend:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.errorlog = logging.getLogger("fake-backend")
        config.graceful_timeout = 0.5
        self._task = asyncio.get_running_loop().create_task(
            serve(self, config, shutdown_trigger=self._stop.wait, mode="asgi"))
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._task, 5)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        path = scope["path"]
        if path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [{"id": self.model}]})
            return
        data = json.loads(body)
        self.received.append(data)
        n = int(data.get("max_tokens") or 4)
        chat = path.endswith("/chat/completions")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        # hypercorn does not cancel the app when the client goes away; it says so on receive().
        disconnect = asyncio.ensure_future(receive())
        try:
            await self._generate(send, data, chat, n, disconnect)
        finally:
            disconnect.cancel()
            self.active -= 1

    async def _pause(self, seconds: float, disconnect: asyncio.Future) -> None:
        if seconds > 0:
            await asyncio.wait([disconnect], timeout=seconds)
        if disconnect.done():
            self.cancelled += 1
            raise _Disconnected

    async def _generate(self, send, data: dict, chat: bool, n: int,
                        disconnect: asyncio.Future) -> None:
        try:
            if not data.get("stream"):
                await self._pause(self.token_delay_s * n, disconnect)
                text = "".join(f"t{i} " for i in range(n))
                choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                           "finish_reason": "length"} if chat else
                          {"index": 0, "text": text, "finish_reason": "length"})
                await _json(send, 200, {"id": "x", "object": "chat.completion",
                                        "model": data["model"], "choices": [choice]})
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(n):
                if self.die_after_tokens is not None and i == self.die_after_tokens:
                    raise RuntimeError("fake backend dies mid-stream")
                await self._pause(self.token_delay_s, disconnect)
                delta = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                if not chat:
                    delta = {"index": 0, "text": f"t{i} ", "finish_reason": None}
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps({"choices": [delta]}).encode()
                            + b"\n\n"})
            await send({"type": "http.response.body", "more_body": False,
                        "body": b'data: {"choices":[{"index":0,"delta":{},'
                                b'"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'})
        except _Disconnected:
            return


class _Disconnected(Exception):
    pass


async def _json(send, status: int, obj) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
