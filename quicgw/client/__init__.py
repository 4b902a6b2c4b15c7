"""The quicgw client SDK: HTTP/3 (aioquic) requests to the gateway, one QUIC connection carrying
many concurrent requests as streams, per-request traffic class, deadline and RFC 9218 priority.

* :class:`AsyncClient`: ``request``, ``stream``, ``chat``, ``completions``, ``stream_chat``.
* :class:`Client`: the same, blocking.
* Every response carries :class:`Timing` (send, first byte, completion) for experiments.
"""

from quicgw.client.client import (
    APIError,
    AsyncClient,
    RequestTimeout,
    Response,
    StreamError,
    StreamingResponse,
    TokenStream,
)
from quicgw.client.connection import ConnectionLost, StreamResetError, Timing
from quicgw.client.sse import SSEParser
from quicgw.client.sync import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "ConnectionLost",
    "RequestTimeout",
    "Response",
    "SSEParser",
    "StreamError",
    "StreamResetError",
    "StreamingResponse",
    "Timing",
    "TokenStream",
]
