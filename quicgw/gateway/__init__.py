"""The gateway: an application core (classification, admission, routing, proxying) served over
HTTP/3 by our aioquic server and over HTTP/1.1 + HTTP/2 on TLS/TCP by hypercorn.

* :class:`Gateway` runs it in-process (``async with Gateway(config) as gw: gw.url``).
* :class:`GatewayApp` is the transport-independent core both listeners share.
"""

from quicgw.gateway.app import GatewayApp
from quicgw.gateway.server import Gateway

__all__ = ["Gateway", "GatewayApp"]
