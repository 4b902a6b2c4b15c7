"""The dashboard without a browser: the live JSON built from metric samples, the benchmark
browser's reading of ILP profile and plan files, the operator routes and the vendored library."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from quicgw.core.classes import DEFAULT_CLASSES
from quicgw.core.qos import RequestQoS
from quicgw.core.routing import InstanceLoad
from quicgw.dashboard.data import (
    BenchmarkLibrary,
    ClassInfo,
    GatewayInfo,
    InstanceInfo,
    live_view,
    load_benchmarks,
)
from quicgw.dashboard.routes import OpsRoutes
from quicgw.metrics import GatewayMetrics

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "quicgw" / "dashboard" / "static"
EXAMPLE_PROFILE = REPO / "ilp" / "examples" / "profiles" / "llama8b-a100-longgen.json"


class Out:
    async def respond(self, status, headers, body): ...

    async def start(self, status, headers): ...

    async def write(self, data): ...

    async def finish(self): ...


def gateway_metrics() -> tuple[GatewayMetrics, GatewayInfo, list[InstanceLoad]]:
    loads = [InstanceLoad(), InstanceLoad()]
    clock = SimpleNamespace(t=50.0)
    m = GatewayMetrics([c.name for c in DEFAULT_CLASSES],
                       [("x", loads[0], SimpleNamespace(capacity=8)),
                        ("y", loads[1], SimpleNamespace(capacity=8))],
                       router="rr", scheduler="abs", clock=lambda: clock.t)
    info = GatewayInfo(tuple(ClassInfo(c.name, c.priority, c.deadline_ms, c.reward_weight)
                             for c in DEFAULT_CLASSES),
                       (InstanceInfo("x", "llama-3.2-1b", "a100-80gb", 8),
                        InstanceInfo("y", "llama-3.1-8b", "a100-80gb", 8)),
                       scheduler="abs", router="rr", started_unix=1000.0)

    async def run(class_index: int, index: int, seconds: float) -> None:
        async def proxy(ex, body, out):
            m.routed("auto", index)
            m.admitted(index)
            clock.t += seconds
            await out.respond(200, [], b"{}")

        qos = RequestQoS(DEFAULT_CLASSES[class_index], clock.t,
                         clock.t + DEFAULT_CLASSES[class_index].deadline_ms / 1000)
        await m.observe(proxy, SimpleNamespace(qos=qos, arrival=clock.t), b"", Out())

    async def traffic():
        for i in range(10):
            await run(0, i % 2, 0.25 * (i + 1))  # realtime (1.8 s): the last 3 are late
        await run(2, 1, 0.5)

    asyncio.run(traffic())
    m.http_request("h3", "chat")
    m.rejected("invalid_api_key")
    loads[1].in_flight, loads[1].queued = 5, 7
    return m, info, loads


def test_live_view_sums_what_metrics_expose():
    m, info, _ = gateway_metrics()
    view = json.loads(json.dumps(live_view(m.samples(), info, now_unix=1060.0)))  # JSON-safe
    assert view["uptime_s"] == 60.0 and view["scheduler"] == "abs" and view["router"] == "rr"
    realtime, free, bulk = view["classes"]
    assert realtime["started"] == realtime["finished"] == 10
    assert realtime["met"] == 7 and realtime["missed"] == 3
    assert realtime["attainment"] == pytest.approx(0.7)
    assert free["attainment"] is None  # nothing judged: no number rather than 0 %
    assert bulk["finished"] == 1
    hist = realtime["duration"]
    assert hist["le"][-1] == "+Inf" and hist["cumulative"][-1] == hist["count"] == 10
    assert hist["sum"] == pytest.approx(0.25 * 55)
    assert view["decisions"]["by_target"] == {"x": 5, "y": 6}
    assert view["decisions"]["by_router"] == {"rr": {"x": 5, "y": 6}}
    x, y = view["instances"]
    assert (x["started"], y["started"]) == (5, 6)
    assert (y["in_flight"], y["queued"], y["up"], y["capacity"]) == (5, 7, 1, 8)
    assert view["protocols"] == {"h3": 1} and view["rejected"] == {"invalid_api_key": 1}
    assert view["quic"] == {"connections": 0, "connections_total": 0, "packets_sent": 0,
                            "packets_lost": 0}


def with_samples(profile: dict) -> dict:
    """The example profile as another engine on another GPU, with raw e2e samples."""
    p = json.loads(json.dumps(profile))
    p.update(engine="vllm", gpu="h100-80gb")
    for pt in p["points"]:
        base = pt["median_e2el_ms"]
        pt["samples"] = {"e2el_ms": [base * (0.5 + k / 100) for k in range(100)]}
    return p


def test_load_benchmarks_reads_profiles_plans_and_reports_broken_files(tmp_path):
    from ilp.solve import main as solve

    d = tmp_path / "runs"
    (d / "nested").mkdir(parents=True)
    profile = json.loads(EXAMPLE_PROFILE.read_text())
    shutil.copy(EXAMPLE_PROFILE, d / "a100.json")
    (d / "nested" / "h100.json").write_text(json.dumps(with_samples(profile)))
    assert solve(["--problem", str(REPO / "ilp/examples/motivation.yaml"),
                  "--plan", str(d / "plan.json"), "--quiet"]) == 0
    (d / "other.json").write_text(json.dumps({"something": "else"}))  # ignored
    (d / "bad-profile.json").write_text(json.dumps({"model": "m", "gpu": "g", "points": []}))
    (d / "truncated.json").write_text('{"kind": ')
    (d / "evaluate.json").write_text(json.dumps({
        "seeds": [1000], "duration_s": 150.0, "workloads": ["stable"], "policies": [],
        "tables": {"poster": {"dqn": {"stable": {"mean": 0.7, "std": 0.01, "min": 0.69,
                                                 "max": 0.71, "spread_over": "seeds"}}}}}))
    out = load_benchmarks([d])
    assert [e["id"] for e in out["evaluations"]] == ["runs/evaluate.json"]
    assert out["evaluations"][0]["clusters"]["poster"]["dqn"]["stable"]["mean"] == 0.7
    assert sorted(p["id"] for p in out["profiles"]) == ["runs/a100.json", "runs/nested/h100.json"]
    assert [p["id"] for p in out["plans"]] == ["runs/plan.json"]
    assert sorted(s["file"] for s in out["skipped"]) == ["runs/bad-profile.json",
                                                         "runs/truncated.json"]
    assert "points" in next(s for s in out["skipped"] if "bad" in s["file"])["error"]
    by_id = {p["id"]: p for p in out["profiles"]}
    a100 = by_id["runs/a100.json"]
    assert (a100["engine"], a100["gpu"], a100["saturation_rpm"]) == ("simulated", "a100-80gb", 15.0)
    pt = a100["points"][0]["metrics"]["e2el_ms"]
    assert pt["p95"] == profile["points"][0]["p95_e2el_ms"]
    assert pt["quantiles_from"] == "percentiles"
    assert [q[0] for q in pt["quantiles"]] == [50.0, 80.0, 90.0, 95.0, 99.0]
    h100 = by_id["runs/nested/h100.json"]["points"][0]["metrics"]["e2el_ms"]
    assert h100["quantiles_from"] == "samples"
    assert h100["quantiles"][0][0] == 2.0 and h100["quantiles"][-1][0] == 100.0
    values = [v for _, v in h100["quantiles"]]
    assert values == sorted(values)
    plan = out["plans"][0]
    assert plan["kind"] == "quicgw.ilp.plan" and len(plan["instances"]) == 3
    json.dumps(out, allow_nan=False)  # what the endpoint sends must be strict JSON


def test_benchmark_library_rereads_only_changed_files(tmp_path):
    shutil.copy(EXAMPLE_PROFILE, tmp_path / "p.json")
    library = BenchmarkLibrary([tmp_path, tmp_path / "missing"])
    first = library.body()
    assert library.body() is first  # cached: nothing changed
    profile = json.loads(EXAMPLE_PROFILE.read_text())
    profile["engine"] = "tgi"
    (tmp_path / "p.json").write_text(json.dumps(profile))
    second = json.loads(library.body())
    assert second["profiles"][0]["engine"] == "tgi"
    assert {"file": str(tmp_path / "missing"), "error": "not a directory"} in second["skipped"]


def test_routes_serve_the_page_metrics_and_json(tmp_path):
    m, info, _ = gateway_metrics()
    routes = OpsRoutes(m, info, [tmp_path])

    def get(path: str):
        return asyncio.run(routes.get(routes.endpoints[path]))

    page = get("/dashboard")
    headers = dict(page.headers)
    assert page.status == 200 and headers[b"content-type"].startswith(b"text/html")
    assert b"default-src 'self'" in headers[b"content-security-policy"]
    assert get("/dashboard/") is page
    assert b"quicgw_requests_finished_total" in get("/metrics").body
    live = json.loads(get("/dashboard/api/live").body)
    assert live["classes"][0]["finished"] == 10
    bench = json.loads(get("/dashboard/api/benchmarks").body)
    assert bench["profiles"] == [] and bench["directories"] == [str(tmp_path)]
    js = get("/dashboard/static/vendor/uPlot.iife.min.js")
    assert dict(js.headers)[b"content-type"].startswith(b"text/javascript")
    assert asyncio.run(routes.get("static:../../metrics.py")).status == 404
    # every file the page references is served by these routes, and nothing else is loaded
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert refs and all(r.startswith("/") or r.startswith("data:") for r in refs), refs
    for ref in refs:
        if ref.startswith("/dashboard/static/"):
            assert ref in routes.endpoints, ref
    for name in ("app.js", "index.html", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://(?!github\.com/leeoniya)", text), \
            f"{name} refers to the network"


def test_vendored_uplot_matches_the_pinned_npm_release():
    script = (REPO / "quicgw" / "dashboard" / "vendor_uplot.sh").read_text()
    version = re.search(r"^VERSION=(\S+)$", script, re.M).group(1)
    js_sha = re.search(r"^JS_SHA256=(\w+)$", script, re.M).group(1)
    css_sha = re.search(r"^CSS_SHA256=(\w+)$", script, re.M).group(1)
    js = (STATIC / "vendor" / "uPlot.iife.min.js").read_bytes()
    assert js.startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */".encode())
    assert hashlib.sha256(js).hexdigest() == js_sha
    css = (STATIC / "vendor" / "uPlot.min.css").read_bytes()
    assert hashlib.sha256(css).hexdigest() == css_sha
    licence = (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    assert "MIT License" in licence and "Leon Sorokin" in licence


def test_the_static_files_are_package_data():
    """Installed from a wheel (the docker images), the page must be there: every file under
    static/ matches a package-data pattern of quicgw.dashboard in pyproject.toml."""
    import fnmatch
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["quicgw.dashboard"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f"{f} is not package data"
