"""The gateway: an application core (classification, admission, routing, proxying) served over
HTTP/3 by our aioquic server and over HTTP/1.1 + HTTP/2 on TLS/TCP by hypercorn.

* :class:`Gateway` runs it in-process (``async with Gateway(config) as gw: gw.url``).
* :class:`GatewayApp` is the transport-independent core both listeners share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quicgw.gateway.app import GatewayApp
    from quicgw.gateway.server import Gateway

__all__ = ["Gateway", "GatewayApp"]


def __getattr__(name: str):
    # Lazy, so that `quicgw --help` (which imports quicgw.gateway.cli) stays fast.
    if name == "Gateway":
        from quicgw.gateway.server import Gateway
        return Gateway
    if name == "GatewayApp":
        from quicgw.gateway.app import GatewayApp
        return GatewayApp
    raise AttributeError(f"module 'quicgw.gateway' has no attribute {name!r}")
