"""The synchronous SDK: :class:`Client` runs an :class:`AsyncClient` on a private event loop in a
background thread, so scripts and notebooks can use the gateway without asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from quicgw.client.client import AsyncClient, Response

T = TypeVar("T")


class Client:
    """Same arguments and methods as :class:`AsyncClient`, blocking; use as a context manager
    or call :meth:`close`."""

    def __init__(self, base_url: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="quicgw-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(base_url, **kwargs)

        self._async = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    def connect(self) -> None:
        self._run(self._async.connect())

    def request(self, method: str, path: str, body: Any = None, headers=None,
                **kwargs: Any) -> Response:
        return self._run(self._async.request(method, path, body, headers, **kwargs))

    def chat(self, messages, **kwargs: Any) -> Response:
        return self._run(self._async.chat(messages, **kwargs))

    def completions(self, prompt, **kwargs: Any) -> Response:
        return self._run(self._async.completions(prompt, **kwargs))

    def stream_chat(self, messages, **kwargs: Any) -> Iterator[str]:
        tokens = self._async.stream_chat(messages, **kwargs)
        iterator = tokens.__aiter__()
        try:
            while True:
                try:
                    yield self._run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(iterator.aclose())

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._async.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
