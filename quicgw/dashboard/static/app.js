/* quicgw dashboard: live view of the gateway (polls /dashboard/api/live) and a browser of ILP
 * benchmark profiles and plans (/dashboard/api/benchmarks). Plain JS, charts by uPlot.
 *
 * Everything plotted is also written into data-* attributes (cumulative counts, percentiles,
 * number of points, last values, painted pixels) so a test can compare the page with /metrics.
 * Text from the server is inserted with textContent only. */
"use strict";
(() => {
  const POLL_MS = 2000;
  const WINDOW_S = 30;
  const HISTORY_S = 900;
  const CHART_H = 230;
  const CLASS_COLORS = ["#ff7a59", "#6aa7ff", "#b48cf2", "#3ecf8e", "#f2b84b", "#f06292", "#4dd0e1"];
  const INSTANCE_COLORS = ["#3ecf8e", "#f2b84b", "#6aa7ff", "#ef5b5b", "#b48cf2", "#4dd0e1", "#ff7a59", "#c0ca33"];
  const PCT_COLORS = { p50: "#3ecf8e", p80: "#4dd0e1", p90: "#6aa7ff", p95: "#f2b84b", p99: "#ef5b5b", mean: "#b48cf2" };
  const AXIS = { stroke: "#8d9ab2", grid: { stroke: "#222c40", width: 1 }, ticks: { stroke: "#283349", width: 1 } };

  const state = { history: [], charts: {}, classes: [], instances: [], polls: 0, bench: null, benchLoading: false };

  // -- small helpers ----------------------------------------------------------------------------
  const $ = (sel, el = document) => el.querySelector(sel);
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") el.className = v;
      else if (k === "style") el.style.cssText = v;
      else if (k.startsWith("data-")) el.setAttribute(k, String(v));
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const fmtSec = (s) => s === null || s === undefined || !isFinite(s) ? "–"
    : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : s < 10 ? `${s.toFixed(2)} s` : s < 600 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
  const fmtMs = (ms) => ms === null || ms === undefined ? "–" : fmtSec(ms / 1000);
  const fmtPct = (x) => x === null || x === undefined || !isFinite(x) ? "–" : `${(x * 100).toFixed(1)}%`;
  const fmtNum = (x) => x === null || x === undefined || !isFinite(x) ? "–"
    : Math.abs(x) >= 1e6 ? `${(x / 1e6).toFixed(1)}M` : Math.abs(x) >= 1e4 ? `${(x / 1e3).toFixed(1)}k`
      : Number.isInteger(x) ? String(x) : x.toFixed(Math.abs(x) < 10 ? 2 : 1);
  const fmtBytes = (b) => !isFinite(b) ? "–" : b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB`
    : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;
  const fmtUptime = (s) => s < 120 ? `${Math.floor(s)} s` : s < 7200 ? `${Math.floor(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  const attainClass = (x) => x === null || x === undefined ? "" : x >= 0.99 ? "good" : x >= 0.9 ? "warn" : "bad";
  const classColor = (i) => CLASS_COLORS[i % CLASS_COLORS.length];
  const instColor = (i) => INSTANCE_COLORS[i % INSTANCE_COLORS.length];

  /* Prometheus' histogram_quantile over cumulative buckets (le ascending, "+Inf" last):
   * linear interpolation inside the bucket, the highest finite bound for the +Inf bucket. */
  function quantile(q, le, cum) {
    const n = le.length;
    if (!n) return null;
    const total = cum[n - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    let pb = 0, pc = 0;
    for (let i = 0; i < n; i++) {
      const b = le[i] === "+Inf" ? Infinity : le[i];
      const c = cum[i];
      if (c >= rank) {
        if (!isFinite(b)) return pb;
        if (c === pc) return b;
        return pb + (b - pb) * (rank - pc) / (c - pc);
      }
      pb = b; pc = c;
    }
    return pb;
  }
  const histQ = (q, hist) => quantile(q, hist.le, hist.cumulative);
  function histDiff(cur, base) {
    if (!base) return cur;
    return { le: cur.le, cumulative: cur.cumulative.map((c, i) => c - (base.cumulative[i] || 0)),
      sum: cur.sum - base.sum, count: cur.count - base.count };
  }

  // -- charts -------------------------------------------------------------------------------------
  /* Colourful pixels in the plot area: series strokes are saturated, grid and axes are grey. */
  function recordInk(u) {
    const { left, top, width, height } = u.bbox;
    if (width <= 0 || height <= 0) return;
    let ink = 0;
    try {
      const img = u.ctx.getImageData(left, top, width, height).data;
      for (let i = 0; i < img.length; i += 4) {
        if (img[i + 3] > 0) {
          const r = img[i], g = img[i + 1], b = img[i + 2];
          if (Math.max(r, g, b) - Math.min(r, g, b) > 60) ink++;
        }
      }
    } catch (e) { ink = -1; }
    u.root.parentElement.dataset.ink = String(ink);
  }

  function makeChart(key, el, series, opts = {}) {
    const old = state.charts[key];
    if (old) old.destroy();
    el.textContent = "";
    const width = Math.max(200, el.clientWidth || 600);
    const u = new uPlot({
      width, height: opts.height || CHART_H,
      scales: {
        x: { time: opts.time !== false, ...(opts.xScale || {}) },
        y: opts.yScale || {},
      },
      axes: [
        { ...AXIS, ...(opts.xAxis || {}) },
        { ...AXIS, size: 76, values: (u, vals) => vals.map(opts.yFmt || fmtNum), ...(opts.yAxis || {}) },
      ],
      series: [{ label: opts.xLabel || "time", value: opts.xValue }, ...series.map((s) => ({
        label: s.label, stroke: s.color, width: s.width || 2, dash: s.dash,
        // Markers where there are points (benchmarks) or too few to draw a line yet (live).
        points: { show: s.points !== undefined ? s.points : (u) => u.data[0].length <= 3, size: 6, fill: s.color },
        value: (u, v) => v === null || v === undefined ? "–" : (opts.yFmt || fmtNum)(v),
      }))],
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      hooks: { draw: [recordInk, ...(opts.draw ? [opts.draw] : [])] },
    }, opts.data || [[], ...series.map(() => [])], el);
    state.charts[key] = u;
    return u;
  }

  function setChart(key, el, data, labels) {
    const u = state.charts[key];
    if (!u) return;
    u.setData(data);
    if (u.scales.x.time && data[0].length) {
      // At least 20 s of time axis, ending at the newest point: one point sits at the right
      // edge instead of uPlot stretching a single timestamp over years.
      const xs = data[0], max = xs[xs.length - 1];
      u.setScale("x", { min: Math.min(xs[0], max - 20), max });
    }
    el.dataset.points = String(data[0].length);
    el.dataset.series = JSON.stringify(labels);
    el.dataset.last = JSON.stringify(data.slice(1).map((s) => s.length ? s[s.length - 1] : null));
  }

  function resizeCharts() {
    for (const [key, u] of Object.entries(state.charts)) {
      const el = u.root.parentElement;
      if (el && el.clientWidth > 0 && Math.abs(el.clientWidth - u.width) > 4) {
        u.setSize({ width: el.clientWidth, height: u.height });
      }
      void key;
    }
  }

  // -- live view ------------------------------------------------------------------------------------
  function setupLive(live) {
    state.classes = live.classes.map((c) => c.name);
    state.instances = live.instances.map((i) => i.name);
    const cls = live.classes.map((c, i) => ({ label: c.name, color: classColor(i) }));
    makeChart("attainment", $("#chart-attainment"), cls, {
      yScale: { range: [0, 104] }, yFmt: (v) => `${Math.round(v)}%`,
      yAxis: { splits: () => [0, 20, 40, 60, 80, 100] } });
    const deadlines = live.classes.map((c, i) => ({ label: `${c.name} deadline`, color: classColor(i) + "99", dash: [6, 5], width: 1, points: false }));
    makeChart("latency", $("#chart-latency"), [...cls, ...deadlines], {
      yScale: { range: (u, min, max) => [0, Math.max(0.1, max * 1.08)] }, yFmt: fmtSec });
    makeChart("throughput", $("#chart-throughput"), cls, {
      yScale: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] }, yFmt: (v) => `${fmtNum(v)}/s` });
    makeChart("load", $("#chart-load"), live.instances.map((x, i) => ({ label: x.name, color: instColor(i) })), {
      yScale: { range: (u, min, max) => [0, Math.max(4, max * 1.1)] }, yFmt: fmtNum });
  }

  /* The snapshot WINDOW_S before history[k] (or nothing: counts since start). */
  function baseOf(k) {
    const t = state.history[k].time;
    for (let j = 0; j < k; j++) if (state.history[j].time >= t - WINDOW_S) return j === k ? null : state.history[j];
    return null;
  }

  function windowStats(cur, base) {
    const out = {};
    const dt = base ? cur.time - base.time : Math.max(1, cur.uptime_s);
    for (const c of cur.classes) {
      const b = base ? base.classes.find((x) => x.name === c.name) : null;
      const met = c.met - (b ? b.met : 0), missed = c.missed - (b ? b.missed : 0);
      const finished = c.finished - (b ? b.finished : 0);
      const dur = histDiff(c.duration, b && b.duration);
      const ttft = histDiff(c.ttft, b && b.ttft);
      out[c.name] = { attainment: met + missed > 0 ? met / (met + missed) : null, rate: dt > 0 ? finished / dt : null,
        p95: histQ(0.95, dur), ttft95: histQ(0.95, ttft), finished };
    }
    const decisions = {};
    for (const [target, n] of Object.entries(cur.decisions.by_target)) {
      decisions[target] = n - (base ? (base.decisions.by_target[target] || 0) : 0);
    }
    return { classes: out, decisions, dt };
  }

  function onLive(live) {
    if (!state.history.length || state.classes.join() !== live.classes.map((c) => c.name).join()) {
      state.history = [];
      setupLive(live);
    }
    state.history.push(live);
    while (state.history.length > 2 && state.history[0].time < live.time - HISTORY_S) state.history.shift();
    state.polls += 1;
    document.body.dataset.updates = String(state.polls);
    document.body.dataset.lastUpdate = String(live.time);

    $("#scheduler").textContent = live.scheduler;
    $("#router").textContent = live.router;
    $("#uptime").textContent = fmtUptime(live.uptime_s);
    $("#footer").textContent = `quicgw ${live.version || ""} · updated ${new Date(live.time * 1000).toLocaleTimeString()}`;

    const k = state.history.length - 1;
    const win = windowStats(live, baseOf(k));
    renderCards(live, win);
    renderClassTable(live);
    renderRouter(live, win);
    renderInstances(live);
    renderTransport(live);
    renderTimeCharts(live);
  }

  function renderCards(live, win) {
    const box = $("#class-cards");
    box.textContent = "";
    live.classes.forEach((c, i) => {
      const w = win.classes[c.name];
      const shown = w.attainment !== null ? w.attainment : c.attainment;
      box.append(h("div", { class: "card", style: `--c:${classColor(i)}`, "data-class": c.name, "data-window-attainment": w.attainment },
        h("div", { class: "name" }, c.name),
        h("div", { class: "meta" }, `priority ${c.priority} · deadline ${fmtMs(c.deadline_ms)} · weight ${c.reward_weight}`),
        h("div", { class: `big ${attainClass(shown)}` }, shown === null ? "" : fmtPct(shown),
          h("small", {}, shown === null ? "no requests yet" : w.attainment !== null ? "on time, last 30 s" : "on time, since start")),
        h("div", { class: "row" },
          h("span", {}, "e2e p95 ", h("b", {}, fmtSec(w.p95 !== null ? w.p95 : histQ(0.95, c.duration)))),
          h("span", {}, "TTFT p95 ", h("b", {}, fmtSec(w.ttft95 !== null ? w.ttft95 : histQ(0.95, c.ttft)))),
          h("span", {}, h("b", {}, fmtNum(w.rate)), " req/s")),
        h("div", { class: "row" },
          h("span", {}, h("b", {}, fmtNum(c.finished)), " finished"),
          h("span", {}, h("b", { class: c.failed ? "bad" : "" }, fmtNum(c.failed)), " failed"),
          h("span", {}, "since start ", h("b", {}, fmtPct(c.attainment))))));
    });
  }

  function renderClassTable(live) {
    const body = $("#class-table tbody");
    body.textContent = "";
    live.classes.forEach((c, i) => {
      const q = { ttft95: histQ(0.95, c.ttft), p50: histQ(0.5, c.duration), p95: histQ(0.95, c.duration), p99: histQ(0.99, c.duration) };
      body.append(h("tr", {
        "data-class": c.name, "data-started": c.started, "data-finished": c.finished, "data-failed": c.failed,
        "data-met": c.met, "data-missed": c.missed, "data-attainment": c.attainment,
        "data-ttft-p95": q.ttft95, "data-e2e-p50": q.p50, "data-e2e-p95": q.p95, "data-e2e-p99": q.p99,
      },
      h("td", {}, h("span", { class: "swatch", style: `--c:${classColor(i)}` }), c.name),
      h("td", { class: "num" }, c.priority), h("td", { class: "num" }, fmtMs(c.deadline_ms)),
      h("td", { class: "num" }, fmtNum(c.started)), h("td", { class: "num" }, fmtNum(c.finished)),
      h("td", { class: `num ${c.failed ? "bad" : ""}`, title: JSON.stringify(c.failed_by_reason) }, fmtNum(c.failed)),
      h("td", { class: "num" }, fmtNum(c.met)), h("td", { class: "num" }, fmtNum(c.missed)),
      h("td", { class: `num ${attainClass(c.attainment)}` }, fmtPct(c.attainment)),
      h("td", { class: "num" }, fmtSec(q.ttft95)), h("td", { class: "num" }, fmtSec(q.p50)),
      h("td", { class: "num" }, fmtSec(q.p95)), h("td", { class: "num" }, fmtSec(q.p99))));
    });
  }

  function renderRouter(live, win) {
    const targets = state.instances;
    const counts = targets.map((t) => live.decisions.by_target[t] || 0);
    const total = counts.reduce((a, b) => a + b, 0);
    $("#router-hint").textContent = `${live.router}: ${fmtNum(total)} decisions since start`;
    const mix = $("#router-mix");
    mix.textContent = "";
    const bars = $("#router-bars");
    bars.textContent = "";
    targets.forEach((t, i) => {
      const share = total ? counts[i] / total : 0;
      if (share > 0) mix.append(h("div", { style: `--c:${instColor(i)};width:${(share * 100).toFixed(3)}%`, title: `${t}: ${fmtPct(share)}` }));
      bars.append(h("div", { class: "bar", "data-target": t, "data-count": counts[i], "data-window-count": win.decisions[t] || 0 },
        h("span", { class: "lbl" }, h("span", { class: "swatch", style: `--c:${instColor(i)}` }), t),
        h("div", { class: "track" }, h("div", { class: "fill", style: `--c:${instColor(i)};width:${(share * 100).toFixed(3)}%` })),
        h("span", { class: "val" }, `${fmtNum(counts[i])} · ${total ? Math.round(share * 100) : 0}%`)));
    });
  }

  function renderInstances(live) {
    const body = $("#instances tbody");
    body.textContent = "";
    live.instances.forEach((x, i) => {
      const used = Math.min(1, x.capacity ? x.in_flight / x.capacity : 0);
      body.append(h("tr", { "data-instance": x.name, "data-in-flight": x.in_flight, "data-queued": x.queued,
        "data-started": x.started, "data-finished": x.finished, "data-failed": x.failed, "data-up": x.up },
      h("td", { class: "nowrap" }, h("span", { class: `updown ${x.up ? "good" : "bad"}`, title: x.up ? "healthy" : "down" }, x.up ? "● " : "○ "), x.name,
        h("div", { class: "hint", style: "margin-left:16px" }, `${x.model} · ${x.gpu}`)),
      h("td", {}, h("div", { class: "gauge", style: `--c:${instColor(i)}` }, h("div", { style: `width:${(used * 100).toFixed(1)}%` }),
        h("span", {}, `${fmtNum(x.in_flight)} / ${x.capacity}`))),
      h("td", { class: `num ${x.queued ? "warn" : ""}` }, fmtNum(x.queued)),
      h("td", { class: "num" }, fmtNum(x.started)),
      h("td", { class: `num ${x.failed ? "bad" : ""}` }, fmtNum(x.failed))));
    });
  }

  function renderTransport(live) {
    $("#sched-hint").textContent = `QUIC bytes by class · ${live.scheduler} scheduler`;
    const bars = $("#sched-bars");
    bars.textContent = "";
    const rows = live.classes.map((c, i) => ({ name: c.name, bytes: c.sent_bytes, lost: c.lost_bytes, color: classColor(i) }));
    rows.push({ name: "unclassified", bytes: live.unclassified_sent_bytes, lost: 0, color: "#5d6a82" });
    const max = Math.max(1, ...rows.map((r) => r.bytes));
    for (const r of rows) {
      bars.append(h("div", { class: "bar", "data-class": r.name, "data-bytes": r.bytes },
        h("span", { class: "lbl" }, h("span", { class: "swatch", style: `--c:${r.color}` }), r.name),
        h("div", { class: "track" }, h("div", { class: "fill", style: `--c:${r.color};width:${(r.bytes / max * 100).toFixed(2)}%` })),
        h("span", { class: "val", title: `lost: ${fmtBytes(r.lost)}` }, fmtBytes(r.bytes))));
    }
    const q = live.quic;
    const lossRate = q.packets_sent ? q.packets_lost / q.packets_sent : null;
    const facts = $("#transport");
    facts.textContent = "";
    const proto = Object.entries(live.protocols).sort((a, b) => b[1] - a[1]).map(([p, n]) => `${p} ${fmtNum(n)}`).join(" · ") || "–";
    const rej = Object.entries(live.rejected).map(([c, n]) => `${c} ${fmtNum(n)}`).join(" · ") || "none";
    for (const [k, v, attrs] of [
      ["QUIC connections", `${fmtNum(q.connections)} open · ${fmtNum(q.connections_total)} total`, { "data-open": q.connections }],
      ["packets", `${fmtNum(q.packets_sent)} sent · ${fmtNum(q.packets_lost)} lost (${lossRate === null ? "–" : (lossRate * 100).toFixed(2) + "%"})`, {}],
      ["requests by protocol", proto, { "data-protocols": JSON.stringify(live.protocols) }],
      ["rejected", rej, {}],
    ]) facts.append(h("dt", {}, k), h("dd", attrs, v));
  }

  function renderTimeCharts(live) {
    const hist = state.history;
    const xs = hist.map((s) => s.time);
    const wins = hist.map((s, k) => windowStats(s, baseOf(k)));
    const names = state.classes;
    const att = names.map((n) => wins.map((w) => w.classes[n].attainment === null ? null : w.classes[n].attainment * 100));
    setChart("attainment", $("#chart-attainment"), [xs, ...att], names);
    const lat = names.map((n) => wins.map((w) => w.classes[n].p95));
    const dl = live.classes.map((c) => xs.map(() => c.deadline_ms / 1000));
    setChart("latency", $("#chart-latency"), [xs, ...lat, ...dl], [...names, ...names.map((n) => `${n} deadline`)]);
    const thr = names.map((n) => wins.map((w) => w.classes[n].rate));
    setChart("throughput", $("#chart-throughput"), [xs, ...thr], names);
    const load = state.instances.map((name) => hist.map((s) => {
      const x = s.instances.find((i) => i.name === name);
      return x ? x.in_flight + x.queued : null;
    }));
    setChart("load", $("#chart-load"), [xs, ...load], state.instances);
  }

  async function poll() {
    try {
      const r = await fetch("/dashboard/api/live", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const live = await r.json();
      onLive(live);
      $("#conn").className = "pill ok";
      $("#conn-text").textContent = "live";
    } catch (e) {
      $("#conn").className = "pill down";
      $("#conn-text").textContent = `disconnected (${e.message})`;
      document.body.dataset.error = String(e.message);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // -- benchmark browser -------------------------------------------------------------------------------
  const uniq = (xs) => [...new Set(xs)];
  function fillSelect(sel, options, keep) {
    const prev = keep ? sel.value : null;
    sel.textContent = "";
    for (const [value, label] of options) sel.append(h("option", { value }, label));
    if (prev !== null && options.some(([v]) => v === prev)) sel.value = prev;
  }

  async function loadBench() {
    if (state.bench || state.benchLoading) return;
    state.benchLoading = true;
    try {
      const r = await fetch("/dashboard/api/benchmarks", { cache: "no-store" });
      const data = await r.json();
      if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
      state.bench = data;
    } catch (e) {
      $("#bench-source").textContent = `could not load benchmarks: ${e.message}`;
      state.benchLoading = false;
      return;
    }
    const b = state.bench;
    $("#bench-source").textContent = `${b.profiles.length} profile(s), ${b.plans.length} plan(s), ${(b.evaluations || []).length} routing evaluation(s) from ${b.directories.join(", ") || "–"}`;
    $("#bench-skipped").textContent = b.skipped.length ? `skipped: ${b.skipped.map((s) => `${s.file} (${s.error})`).join("; ")}` : "";
    fillSelect($("#pick-engine"), uniq(b.profiles.map((p) => p.engine)).map((e) => [e, e]));
    onPick("engine");
    fillSelect($("#pick-plan"), b.plans.map((p, i) => [String(i), `${p.problem || p.id} (${p.id})`]));
    renderPlan();
    fillSelect($("#pick-eval"), (b.evaluations || []).map((e, i) => [String(i), e.id]));
    renderEval();
  }

  function onPick(level) {
    const b = state.bench;
    if (!b) return;
    const engine = $("#pick-engine").value;
    if (level === "engine") {
      fillSelect($("#pick-model"), uniq(b.profiles.filter((p) => p.engine === engine).map((p) => p.model)).map((m) => [m, m]));
    }
    if (level === "engine" || level === "model") {
      const model = $("#pick-model").value;
      fillSelect($("#pick-gpu"), b.profiles.map((p, i) => [p, i]).filter(([p]) => p.engine === engine && p.model === model)
        .map(([p, i]) => [String(i), `${p.gpu}${p.mode ? " · " + p.mode : ""} · ${p.id}`]));
    }
    renderProfile();
  }

  function renderProfile() {
    const b = state.bench;
    const idx = $("#pick-gpu").value;
    const facts = $("#profile-facts");
    facts.textContent = "";
    if (!b || idx === "") {
      facts.append(h("div", { class: "panel empty" }, "No ILP profiles in the benchmark directory: run `python -m ilp.bench` and set gateway.dashboard_data_dir."));
      return;
    }
    const p = b.profiles[Number(idx)];
    const metric = $("#pick-metric").value;
    const log = $("#pick-log").checked;
    const w = p.workload || {};
    const card = (name, big, meta) => h("div", { class: "card" }, h("div", { class: "meta" }, name), h("div", { class: "big" }, big), h("div", { class: "meta" }, meta));
    facts.append(
      card("saturation", p.saturation_rpm !== null ? `${fmtNum(p.saturation_rpm)} RPM` : "–", "highest offered rate that kept up"),
      card("service capacity", p.capacity_rpm !== null ? `${fmtNum(p.capacity_rpm)} RPM` : "–", "highest completion rate measured"),
      card(`${p.engine} · ${p.model}`, `${p.gpu}${p.mode ? " · " + p.mode : ""}`, `${p.points.length} rates · ${p.arrival} arrivals`),
      card("workload", `${fmtNum(w.input_tokens)} → ${fmtNum(w.output_tokens)}`, `input → output tokens${w.max_batch ? ` · max batch ${w.max_batch}` : ""}`));

    const pts = p.points.filter((pt) => pt.metrics[metric]);
    const rates = pts.map((pt) => pt.rate_rpm);
    const keys = uniq(pts.flatMap((pt) => Object.keys(pt.metrics[metric]).filter((k) => /^p[0-9.]+$/.test(k))))
      .sort((a, b2) => parseFloat(a.slice(1)) - parseFloat(b2.slice(1)));
    const stats = [...keys, "mean"];
    const yScale = log ? { distr: 3, log: 10 } : { range: (u, min, max) => [0, max * 1.08] };
    const sat = p.saturation_rpm;
    const drawSat = (u) => {
      if (sat === null || sat === undefined) return;
      const x = u.valToPos(sat, "x", true);
      const { top, height } = u.bbox;
      const ctx = u.ctx;
      ctx.save(); ctx.strokeStyle = "#ef5b5b"; ctx.setLineDash([6, 5]); ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke(); ctx.restore();
    };
    const elLat = $("#chart-bench-latency");
    makeChart("bench-latency", elLat, stats.map((s) => ({ label: s, color: PCT_COLORS[s] || "#9aa5b8", points: true })), {
      time: false, xLabel: "offered RPM", yScale, yFmt: fmtMs, draw: drawSat, xValue: (u, v) => v === null ? "–" : `${fmtNum(v)} RPM`,
    });
    setChart("bench-latency", elLat, [rates, ...stats.map((s) => pts.map((pt) => pt.metrics[metric][s] ?? null))], stats);
    elLat.dataset.profile = p.id;
    elLat.dataset.metric = metric;

    // Quantile curves: one per rate, on the union of their percentile grids.
    const grid = uniq(pts.flatMap((pt) => pt.metrics[metric].quantiles.map((q) => q[0]))).sort((a, b2) => a - b2);
    const shade = (i, n) => `hsl(${Math.round(140 - 140 * (n > 1 ? i / (n - 1) : 0))}, 70%, 60%)`;
    const elDist = $("#chart-bench-dist");
    makeChart("bench-dist", elDist, pts.map((pt, i) => ({ label: `${fmtNum(pt.rate_rpm)} RPM`, color: shade(i, pts.length), dash: pt.saturated ? [4, 4] : undefined, width: 1.5 })), {
      time: false, xLabel: "percentile", yScale, yFmt: fmtMs, xValue: (u, v) => v === null ? "–" : `p${v}`,
      xAxis: { values: (u, vals) => vals.map((v) => `p${v}`) },
    });
    const lookup = pts.map((pt) => new Map(pt.metrics[metric].quantiles.map((q) => [q[0], q[1]])));
    setChart("bench-dist", elDist, [grid, ...lookup.map((m) => grid.map((g) => m.has(g) ? m.get(g) : null))], pts.map((pt) => pt.rate_rpm));

    const elThr = $("#chart-bench-throughput");
    const allRates = p.points.map((pt) => pt.rate_rpm);
    makeChart("bench-throughput", elThr, [
      { label: "achieved", color: "#3ecf8e", points: true },
      { label: "offered (ideal)", color: "#8d9ab2", dash: [6, 5], width: 1 },
    ], { time: false, xLabel: "offered RPM", yScale: { range: (u, min, max) => [0, max * 1.08] }, yFmt: (v) => `${fmtNum(v)}`, draw: drawSat });
    setChart("bench-throughput", elThr, [allRates, p.points.map((pt) => pt.achieved_rpm), allRates], ["achieved", "offered"]);

    const table = $("#bench-points");
    table.querySelector("thead").textContent = "";
    table.querySelector("thead").append(h("tr", {}, ...["offered RPM", "achieved", "completed", "failed", "batch", ...keys.map((k) => `${k}`), "mean"].map((t, i) => h("th", { class: i ? "num" : "" }, t))));
    const body = table.querySelector("tbody");
    body.textContent = "";
    for (const pt of p.points) {
      const m = pt.metrics[metric] || {};
      body.append(h("tr", { class: pt.saturated ? "sat" : "", "data-rate": pt.rate_rpm },
        h("td", {}, `${fmtNum(pt.rate_rpm)}${pt.saturated ? " (saturated)" : ""}`),
        h("td", { class: "num" }, fmtNum(pt.achieved_rpm)), h("td", { class: "num" }, pt.completed),
        h("td", { class: "num" }, pt.failed), h("td", { class: "num" }, fmtNum(pt.mean_batch)),
        ...keys.map((k) => h("td", { class: "num" }, fmtMs(m[k]))), h("td", { class: "num" }, fmtMs(m.mean))));
    }
  }

  function renderPlan() {
    const b = state.bench;
    const view = $("#plan-view");
    view.textContent = "";
    if (!b || !b.plans.length) {
      $("#plan-summary").textContent = "";
      view.append(h("div", { class: "empty" }, "No ILP plans in the benchmark directory: `python -m ilp.solve --plan FILE` writes one."));
      return;
    }
    const plan = b.plans[Number($("#pick-plan").value || 0)];
    view.dataset.plan = plan.id;
    $("#plan-summary").textContent = `${plan.approach} · objective ${plan.objective} = ${fmtNum(plan.objective_value)} · ${plan.optimal ? "optimal" : "feasible"} · ${plan.solver} ${fmtSec(plan.solve_s)}`;
    const colors = new Map(plan.classes.map((c, i) => [c.name, classColor(i)]));
    const compare = h("div", { class: "compare" }, h("div", { class: "c best", "data-instances": plan.instances.length }, h("b", {}, plan.instances.length), `instances · ILP (${plan.approach})`),
      ...Object.entries(plan.baselines || {}).map(([k, v]) => h("div", { class: "c" }, h("b", {}, v), `instances · ${k.replace(/_/g, " ")}`)));
    const legend = h("div", { class: "row hint" }, ...plan.classes.map((c) => h("span", { style: "margin-right:14px" },
      h("span", { class: "swatch", style: `--c:${colors.get(c.name)}` }), `${c.name} (priority ${c.priority}, ${fmtNum(c.rate_rpm)} RPM, ${c.stat === "mean" ? "mean" : "p" + c.stat} ${c.metric} ≤ ${fmtMs(c.latency_ms)})`)));
    const table = h("table", { class: "tbl" }, h("thead", {}, h("tr", {}, ...["instance", "model", "GPU · mode", "load / cap", "", "predicted latency per class"].map((t) => h("th", {}, t)))));
    const tb = h("tbody");
    for (const inst of plan.instances) {
      const total = Object.values(inst.load_rpm).reduce((a, v) => a + v, 0);
      const cap = inst.rate_cap_rpm || total || 1;
      const stack = h("div", { class: "stack", title: "load by class, relative to the instance's rate cap" },
        ...plan.classes.filter((c) => inst.load_rpm[c.name] > 0).map((c) => h("div", { style: `--c:${colors.get(c.name)};width:${(inst.load_rpm[c.name] / cap * 100).toFixed(2)}%`, title: `${c.name}: ${fmtNum(inst.load_rpm[c.name])} RPM` })));
      const pred = plan.classes.filter((c) => inst.predicted_ms && inst.predicted_ms[c.name] !== undefined).map((c) => {
        const v = inst.predicted_ms[c.name];
        return h("span", { class: v === null || v > c.latency_ms ? "bad" : "", style: "margin-right:10px" }, h("span", { class: "swatch", style: `--c:${colors.get(c.name)}` }), `${fmtMs(v)} / ${fmtMs(c.latency_ms)}`);
      });
      tb.append(h("tr", { "data-instance": inst.name }, h("td", {}, inst.name), h("td", {}, inst.model), h("td", {}, `${inst.gpu_type} · ${inst.mode}`),
        h("td", {}, stack), h("td", { class: "num" }, `${fmtNum(total)} / ${fmtNum(inst.rate_cap_rpm)} RPM`), h("td", {}, ...pred)));
    }
    table.append(tb);
    const routes = h("table", { class: "tbl", style: "margin-top:10px" }, h("thead", {}, h("tr", {}, h("th", {}, "class"), h("th", {}, "routes (share of the class's traffic per instance)"))));
    const rb = h("tbody");
    const instIdx = new Map(plan.instances.map((x, i) => [x.name, i]));
    for (const [cls, rs] of Object.entries(plan.routes || {})) {
      rb.append(h("tr", {}, h("td", {}, h("span", { class: "swatch", style: `--c:${colors.get(cls)}` }), cls),
        h("td", {}, h("div", { class: "stack" }, ...rs.map((r) => h("div", { style: `--c:${instColor(instIdx.get(r.instance) || 0)};width:${(r.fraction * 100).toFixed(2)}%`, title: `${r.instance}: ${fmtPct(r.fraction)}` }))),
          h("span", { class: "hint" }, rs.map((r) => `${r.instance} ${fmtPct(r.fraction)}`).join(", ")))));
    }
    routes.append(rb);
    view.append(compare, legend, table, routes);
  }

  /* rlrouter evaluations: mean score (weighted quality within the deadline) per router and
   * workload on held-out seeds; the best router of each column is marked. */
  function renderEval() {
    const b = state.bench;
    const view = $("#eval-view");
    view.textContent = "";
    const evals = (b && b.evaluations) || [];
    if (!evals.length) {
      $("#eval-summary").textContent = "";
      view.append(h("div", { class: "empty" }, "No rlrouter evaluations in the benchmark directory: `python training/evaluate.py --out-dir DIR` writes evaluate.json."));
      return;
    }
    const ev = evals[Number($("#pick-eval").value || 0)];
    view.dataset.evaluation = ev.id;
    $("#eval-summary").textContent = `score = weighted quality within the deadline · ${(ev.seeds || []).length} test seeds · ${fmtSec(ev.duration_s)} per run`;
    const table = (title, workloads, rows, cell) => {
      const best = Object.fromEntries(workloads.map((w) => [w, Math.max(...Object.values(rows).map((r) => (cell(r, w) ?? -Infinity)))]));
      const max = Math.max(1e-9, ...Object.values(best).filter(isFinite));
      return h("div", { style: "margin-bottom:12px" }, h("div", { class: "hint", style: "margin:4px 0" }, title),
        h("table", { class: "tbl" }, h("thead", {}, h("tr", {}, h("th", {}, "router"), ...workloads.map((w) => h("th", {}, w)))),
          h("tbody", {}, ...Object.entries(rows).map(([router, r]) => h("tr", { "data-router": router }, h("td", {}, router),
            ...workloads.map((w) => {
              const v = cell(r, w);
              const isBest = v !== null && v !== undefined && v === best[w];
              return h("td", { "data-workload": w, "data-score": v },
                h("div", { class: "bars" }, h("div", { class: "bar", style: "grid-template-columns: 1fr 70px; margin:0" },
                  h("div", { class: "track" }, h("div", { class: "fill", style: `--c:${isBest ? "#3ecf8e" : "#6aa7ff"};width:${v ? (v / max * 100).toFixed(1) : 0}%` })),
                  h("span", { class: `val ${isBest ? "good" : ""}` }, v === null || v === undefined ? "–" : v.toFixed(3)))));
            }))))));
    };
    for (const [cluster, rows] of Object.entries(ev.clusters)) {
      view.append(table(`cluster ${cluster}: mean score over the test seeds, per workload`, ev.workloads.filter((w) => Object.values(rows).some((r) => r[w])), rows, (r, w) => r[w] ? r[w].mean : null));
    }
    for (const [w, rows] of Object.entries(ev.poster_layout || {})) {
      const scheds = [...new Set(Object.values(rows).flatMap((r) => Object.keys(r)))];
      view.append(table(`${w} workload over an emulated network: score per router (rows) and stream scheduler (columns)`, scheds, rows, (r, s) => r[s] ?? null));
    }
  }

  // -- tabs ---------------------------------------------------------------------------------------------
  function showView() {
    const bench = location.hash === "#benchmarks";
    $("#view-live").classList.toggle("hidden", bench);
    $("#view-benchmarks").classList.toggle("hidden", !bench);
    $("#tab-live").classList.toggle("active", !bench);
    $("#tab-benchmarks").classList.toggle("active", bench);
    if (bench) {
      if (state.bench) renderProfile(); else loadBench();
    }
    resizeCharts();
  }

  function init() {
    const nav = performance.getEntriesByType("navigation")[0];
    document.body.dataset.protocol = nav ? nav.nextHopProtocol : "";
    $("#pick-engine").addEventListener("change", () => onPick("engine"));
    $("#pick-model").addEventListener("change", () => onPick("model"));
    $("#pick-gpu").addEventListener("change", renderProfile);
    $("#pick-metric").addEventListener("change", renderProfile);
    $("#pick-log").addEventListener("change", renderProfile);
    $("#pick-plan").addEventListener("change", renderPlan);
    $("#pick-eval").addEventListener("change", renderEval);
    window.addEventListener("hashchange", showView);
    window.addEventListener("resize", resizeCharts);
    showView();
    poll();
  }
  init();
})();
