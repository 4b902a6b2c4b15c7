"""The operator side of the gateway: ``/metrics`` and a live dashboard with a benchmark browser.

* :mod:`quicgw.dashboard.routes` answers the operator endpoints (on the public listeners and on
  the optional plain-HTTP admin port, :mod:`quicgw.dashboard.admin`);
* :mod:`quicgw.dashboard.data` builds their JSON from the metric samples and the ILP files;
* ``static/`` is the page (plain HTML/JS) and the vendored uPlot (``vendor_uplot.sh``).
"""
