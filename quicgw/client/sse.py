"""A sans-IO parser of server-sent events (the ``text/event-stream`` format OpenAI streams use).

Hand-rolled on purpose: httpx-sse parses httpx responses, but the SDK reads bytes off QUIC
streams; this is the part of the format those streams use (``data:`` fields, blank-line event
boundaries, comments and other fields ignored), per the WHATWG HTML "event stream" grammar.
"""

from __future__ import annotations


class SSEParser:
    """Feed bytes, get the ``data`` of each complete event (multi-line data joined by ``\\n``)."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of \r\n: wait for more
                self._buffer = buffer
                return []
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()  # incomplete last line (b"" when the chunk ended a line)
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # other fields (event, id, retry) and ":" comments carry nothing we use
        return events
