/* μGPT lab — the page. Plain JavaScript, no build step; charts with the bundled plotly.js.
 *
 * The page talks to the server only through its documented API:
 *   GET/POST /api/...          runs, streams, mechanisms, uploads, exports
 *   WS /ws/runs/{id}           hello (history), update (≤ 20/s), reply, error, state
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const LOSS_KEYS = ["x", "n", "mean", "min", "max", "ema", "skips", "replays"];
  const LOSS_CAP = 4000; // loss bins kept per run; past it the bin width doubles
  const SERIES_CAP = 4000;
  const TEXT_SPANS = 1500;
  const EVENTS_SHOWN = 300;
  const PHASE_FILL = [
    "rgba(31,95,191,0.07)", "rgba(29,122,70,0.08)", "rgba(161,92,0,0.09)",
    "rgba(120,60,170,0.08)", "rgba(180,35,24,0.07)", "rgba(0,128,128,0.08)",
  ];
  const PHASE_SWATCH = ["#7ea3dc", "#79b896", "#d6a45c", "#b299d4", "#de8c84", "#6fb9b9"];
  const COMPARE_COLORS = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#e377c2", "#17becf"];
  const BASELINES = [["gzip", "#8c564b"], ["xz", "#7f7f7f"], ["ppmd", "#bcbd22"]];
  // URL keys of each config section (the config itself comes from the server)
  const SECTION_KEYS = {
    model: ["n_layers", "d_model", "n_heads", "d_ff", "context", "activation", "tied_head", "init_std", "dtype"],
    optim: ["name", "lr", "beta1", "beta2", "eps", "weight_decay", "momentum", "grad_clip"],
    learner: ["update_every", "window_loss", "batch_streams", "substream_bytes"],
  };
  const URL_NAME = { name: "optimizer" };

  const S = {
    settings: {}, mechanisms: [], streams: null,
    runId: null, run: null, ws: null, latest: {},
    hist: emptyHistory(), compare: new Map(), runs: [],
    pending: new Map(), nextRequest: 1,
    chartDirty: true, formRunId: null, lastTextIndex: -1, utf8: null,
    rows: [], reconnectTimer: null, closing: null, dirty: {}, textQueue: [], revision: 0,
    status: null, loadedAt: performance.now(), helloAt: 0, firstUpdate: false,
    winners: new Map(), winnerOrder: [], presets: [],
  };
  const WINNERS_KEPT = 4000;
  const EXPERT_COLORS = ["#1f5fbf", "#8c564b", "#bcbd22", "#2ca02c", "#17becf", "#9467bd",
    "#e377c2", "#ff7f0e", "#d62728", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39"];
  const expertColor = (i) => EXPERT_COLORS[i % EXPERT_COLORS.length];

  // ------------------------------------------------------------------ helpers

  function emptyHistory() {
    return {
      loss: emptyLoss(),
      bpb: { x: [], y: [] }, lr: { x: [], lr: [], grad_norm: [] },
      baselines: [], alarms: [], events: [],
    };
  }

  async function api(method, path, body) {
    const opts = { method, headers: {} };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      let detail = data && data.detail !== undefined ? data.detail : res.statusText;
      if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      throw new Error(String(detail));
    }
    return data;
  }

  let noticeTimer = null;
  function notify(message, kind = "error") {
    const box = $("notice");
    $("notice-text").textContent = message;
    box.classList.toggle("info", kind === "info");
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, kind === "info" ? 5000 : 15000);
  }

  const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));
  const fmtInt = (v) => (v === null || v === undefined ? "–" : String(Math.round(Number(v))).replace(/\B(?=(\d{3})+(?!\d))/g, ","));
  const fmtLr = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(3));

  function symbolText(sym) {
    if (sym === 256) return "BOS";
    if (sym === 32) return "␣";
    if (sym === 10) return "↵";
    if (sym === 9) return "⇥";
    if (sym < 32 || sym === 127) return "\\x" + sym.toString(16).padStart(2, "0");
    if (sym > 127) return "\\x" + sym.toString(16);
    return String.fromCharCode(sym);
  }

  function emptyLoss() {
    const out = { width: 1 };
    for (const k of LOSS_KEYS) out[k] = [];
    return out;
  }

  // Bins of equal width aligned from byte 0 (the server's history.fold_loss, mirrored):
  // an incoming bin crossing a boundary is shared out by bytes; past LOSS_CAP bins the width
  // doubles and neighbours merge, so the curve always starts at byte 0.
  function doubleWidth(t) {
    const width = t.width * 2;
    const out = emptyLoss();
    out.width = width;
    for (let i = 0; i < t.x.length; i++) {
      const start = Math.floor(t.x[i] / width) * width;
      const last = out.x.length - 1;
      if (last >= 0 && out.x[last] === start) {
        const n = out.n[last] + t.n[i];
        out.mean[last] = (out.mean[last] * out.n[last] + t.mean[i] * t.n[i]) / n;
        out.n[last] = n;
        out.min[last] = Math.min(out.min[last], t.min[i]);
        out.max[last] = Math.max(out.max[last], t.max[i]);
        out.ema[last] = t.ema[i];
        out.skips[last] += t.skips[i];
        out.replays[last] += t.replays[i];
      } else {
        out.x.push(start);
        for (const k of LOSS_KEYS.slice(1)) out[k].push(t[k][i]);
      }
    }
    return out;
  }

  function appendLoss(target, loss) {
    if (!loss || !loss.x || !loss.x.length) return target;
    const size = loss.x.length;
    const zeros = () => loss.x.map(() => 0);
    const mean = loss.mean, mins = loss.min || mean, maxs = loss.max || mean, emas = loss.ema || mean;
    const skips = loss.skips || zeros(), replays = loss.replays || zeros();
    const lastByte = loss.x[size - 1] + loss.n[size - 1] - 1;
    if (loss.width && !target.x.length) target.width = loss.width;
    while (Math.floor(lastByte / target.width) >= LOSS_CAP) target = doubleWidth(target);
    const t = target, width = t.width;
    for (let i = 0; i < size; i++) {
      let x = loss.x[i];
      const end = x + loss.n[i];
      while (x < end) { // a bin crossing a boundary is split, its bytes shared out
        const start = Math.floor(x / width) * width;
        const n = Math.min(end, start + width) - x;
        x += n;
        const last = t.x.length - 1;
        if (last >= 0 && t.x[last] === start) {
          const total = t.n[last] + n;
          t.mean[last] = (t.mean[last] * t.n[last] + mean[i] * n) / total;
          t.n[last] = total;
          t.min[last] = Math.min(t.min[last], mins[i]);
          t.max[last] = Math.max(t.max[last], maxs[i]);
          t.ema[last] = emas[i];
        } else {
          t.x.push(start); t.n.push(n); t.mean.push(mean[i]); t.min.push(mins[i]); t.max.push(maxs[i]);
          t.ema.push(emas[i]); t.skips.push(0); t.replays.push(0);
        }
      }
      t.skips[t.x.length - 1] += skips[i];
      t.replays[t.x.length - 1] += replays[i];
    }
    return t;
  }

  function thin(series) {
    const keys = Object.keys(series);
    const size = series[keys[0]].length;
    if (size <= SERIES_CAP) return;
    for (const k of keys) {
      const kept = series[k].filter((_, i) => i % 2 === 0);
      if ((size - 1) % 2) kept.push(series[k][size - 1]);
      series[k] = kept;
    }
  }

  // ------------------------------------------------------------------ URL <-> config

  function valueText(v) {
    if (typeof v === "boolean") return v ? "true" : "false";
    return String(v);
  }

  function parseValue(text) {
    const low = text.trim().toLowerCase();
    if (low === "true") return true;
    if (low === "false") return false;
    if (text.trim() !== "" && !Number.isNaN(Number(text))) return Number(text);
    return text;
  }

  function mechText(entry) {
    const parts = Object.entries(entry)
      .filter(([k]) => k !== "name")
      .map(([k, v]) => `${k}=${valueText(v)}`);
    return entry.name + (parts.length ? ":" + parts.join(",") : "");
  }

  function configToQuery(config) {
    const p = new URLSearchParams();
    for (const [section, keys] of Object.entries(SECTION_KEYS)) {
      const values = config[section] || {};
      for (const key of keys) if (values[key] !== undefined) p.set(URL_NAME[key] || key, valueText(values[key]));
    }
    p.set("seed", String(config.seed || 0));
    if (config.stream) p.set("stream", config.stream);
    for (const m of config.mechanisms || []) p.append("mech", mechText(m));
    return p;
  }

  function queryToConfig(params) {
    const config = { model: {}, optim: {}, learner: {}, mechanisms: [] };
    let any = false;
    for (const [section, keys] of Object.entries(SECTION_KEYS)) {
      for (const key of keys) {
        const name = URL_NAME[key] || key;
        if (params.has(name)) {
          config[section][key] = key === "name" ? params.get(name) : parseValue(params.get(name));
          any = true;
        }
      }
    }
    if (params.has("seed")) { config.seed = Number(params.get("seed")); any = true; }
    if (params.has("stream")) { config.stream = params.get("stream"); any = true; }
    for (const text of params.getAll("mech")) {
      const cut = text.indexOf(":");
      const entry = { name: cut < 0 ? text : text.slice(0, cut) };
      if (cut >= 0) {
        for (const pair of text.slice(cut + 1).split(",")) {
          const eq = pair.indexOf("=");
          if (eq > 0) entry[pair.slice(0, eq)] = parseValue(pair.slice(eq + 1));
        }
      }
      config.mechanisms.push(entry);
      any = true;
    }
    return any ? config : null;
  }

  function canonicalQuery(params) {
    const p = new URLSearchParams(params);
    p.delete("run");
    p.sort();
    return p.toString();
  }

  function writeUrl() {
    if (!S.run) return;
    const p = configToQuery(S.run.config);
    p.set("run", S.run.id);
    const url = `${location.pathname}?${p.toString()}`;
    if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  }

  // ------------------------------------------------------------------ runs and the socket

  async function createRun(config, label) {
    const run = await api("POST", "/api/runs", { config, label: label || null });
    refreshRuns();
    return run;
  }

  function command(cmd) {
    return new Promise((resolve, reject) => {
      const ws = S.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(new Error("not connected to the server"));
        return;
      }
      const id = `q${S.nextRequest++}`;
      const timer = setTimeout(() => {
        S.pending.delete(id);
        reject(new Error(`no answer to ${cmd.type}`));
      }, 180000);
      S.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...cmd, request_id: id }));
    });
  }

  async function run_(cmd) {
    try {
      return await command(cmd);
    } catch (err) {
      notify(err.message);
      return null;
    }
  }

  function wsUrl(path) {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
  }

  function connect(runId) {
    clearTimeout(S.reconnectTimer);
    if (S.ws) {
      S.closing = S.ws;
      S.ws.close();
    }
    if (S.runId !== runId) {
      S.hist = emptyHistory();
      S.latest = {};
      S.run = null;
      resetText();
      $("event-log").innerHTML = "";
      S.compare.delete(runId);
    }
    S.runId = runId;
    const ws = new WebSocket(wsUrl(`/ws/runs/${encodeURIComponent(runId)}`));
    S.ws = ws;
    ws.onmessage = (ev) => {
      if (S.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (S.closing === ws || S.ws !== ws) return;
      for (const [, p] of S.pending) { clearTimeout(p.timer); p.reject(new Error("connection closed")); }
      S.pending.clear();
      if (ev.code === 4404) return; // the run is gone; the error message said so
      setBadge("disconnected");
      S.reconnectTimer = setTimeout(() => connect(runId), 2000);
    };
    renderRunsTable();
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello": return applyHello(msg);
      case "update": return applyUpdate(msg);
      case "reply": case "error": {
        const p = msg.request_id ? S.pending.get(msg.request_id) : null;
        if (p) {
          S.pending.delete(msg.request_id);
          clearTimeout(p.timer);
          if (msg.type === "reply") p.resolve(msg.result || {});
          else p.reject(new Error(msg.message));
        } else if (msg.type === "error") notify(msg.message);
        return;
      }
      case "state":
        if (S.run) { S.run.state = msg.state; S.run.error = msg.error; }
        S.latest.state = msg.state;
        renderStatus();
        if (msg.state === "failed") notify(`This run failed: ${msg.error}`);
        refreshRuns();
        return;
      default:
        return;
    }
  }

  function applyHello(msg) {
    const run = msg.run;
    const h = msg.history || {};
    S.run = run;
    S.hist = emptyHistory();
    S.hist.loss = appendLoss(S.hist.loss, h.loss);
    S.hist.bpb = h.bpb || { x: [], y: [] };
    S.hist.lr = h.lr || { x: [], lr: [], grad_norm: [] };
    S.hist.baselines = h.baselines || [];
    S.hist.alarms = h.alarms || [];
    S.latest = h.latest || {};
    if (!S.latest.state) S.latest.state = run.state;
    resetText();
    appendText(h.text || []);
    flushText();
    $("event-log").innerHTML = "";
    addEvents(h.events || []);
    if (S.formRunId !== run.id) {
      S.formRunId = run.id;
      fillModelForm(run.config);
      fillRacePresets();
      setSpec(run.stream && run.stream.spec ? run.stream.spec : (S.streams ? S.streams.default_spec : ""));
    }
    if (run.state === "failed" && run.error) notify(`This run failed: ${run.error}`);
    S.helloAt = performance.now();
    S.firstUpdate = (S.latest.pos || 0) > 0;
    renderStatusNotice();
    syncMechanisms(run.mechanisms || []);
    S.winners = new Map();
    S.winnerOrder = [];
    if (S.latest.experts) noteExperts(S.latest.experts);
    renderAll();
    writeUrl();
    renderRunsTable();
  }

  function applyUpdate(msg) {
    S.hist.loss = appendLoss(S.hist.loss, msg.loss);
    if (msg.pos && msg.bpb !== null && msg.bpb !== undefined) {
      const b = S.hist.bpb;
      if (!b.x.length || b.x[b.x.length - 1] !== msg.pos) {
        b.x.push(msg.pos); b.y.push(msg.bpb); thin(b);
        const l = S.hist.lr;
        l.x.push(msg.pos); l.lr.push(msg.lr); l.grad_norm.push(msg.grad_norm); thin(l);
      }
    }
    if (msg.baselines) S.hist.baselines.push(msg.baselines);
    for (const e of msg.events || []) if (e.kind === "alarm") S.hist.alarms.push(e);
    addEvents(msg.events || []);
    appendText(msg.text || []);
    for (const key of ["state", "pos", "total", "bpb", "bytes_per_s", "max_bytes_per_s", "lr", "base_lr",
      "grad_norm", "counters", "topk", "next_byte", "attention", "phases", "mechanisms",
      "model_view", "experts"]) {
      if (key in msg) S.latest[key] = msg[key];
    }
    if (S.run && msg.engine) S.run.engine = msg.engine;
    if (S.run) {
      S.run.state = msg.state || S.run.state;
      if (msg.config) { S.run.config = msg.config; writeUrl(); renderCli(); }
      if (msg.mechanisms) { S.run.mechanisms = msg.mechanisms; syncMechanisms(msg.mechanisms); }
    }
    S.dirty.status = true;
    if (msg.topk) S.dirty.topk = true;
    if (msg.attention) S.dirty.attention = true;
    if (msg.model_view) S.dirty.diagram = true;
    if (msg.experts) { noteExperts(msg.experts); S.dirty.experts = true; }
    if ((msg.pos || 0) > 0 && !S.firstUpdate) { S.firstUpdate = true; renderStatusNotice(); }
    if (msg.phases) S.dirty.phases = true;
    S.chartDirty = true;
  }

  // Drawing happens on a timer, a few times a second, whatever the message rate: each
  // redraw forces a layout, and a page that re-laid itself out on every message would fall
  // behind on a slow machine.
  function tick() {
    if (document.hidden) return;
    flushText();
    const d = S.dirty;
    S.dirty = {};
    if (d.status) { renderStatus(); renderCounters(); }
    if (d.topk) renderTopk();
    if (d.attention) renderAttention();
    if (d.phases) renderPhases();
    if (d.diagram) renderDiagram();
    if (d.experts) renderExperts();
    S.ticks = (S.ticks || 0) + 1;
    if (S.ticks % 2 === 0) drawCharts();
  }

  // ------------------------------------------------------------------ status bar

  function setBadge(state) {
    const badge = $("run-state");
    badge.textContent = state;
    badge.dataset.state = state;
  }

  function currentPhase(pos) {
    const phases = (S.run && S.run.stream && S.run.stream.phases) || [];
    for (let i = 0; i < phases.length; i++) {
      if (pos < phases[i].end || i === phases.length - 1) return [i, phases[i]];
    }
    return [-1, null];
  }

  function renderStatus() {
    const L = S.latest;
    const state = L.state || (S.run ? S.run.state : "starting");
    setBadge(state);
    $("bytes-seen").textContent = String(L.pos || 0);
    const total = L.total || (S.run && S.run.total);
    $("bytes-total").textContent = total ? `/ ${fmtInt(total)}` : "";
    $("bpb").textContent = fmt(L.bpb);
    // the Runs table's row of this run shows the same numbers as the top bar
    const row = document.querySelector(`#runs-table tr.viewing`);
    if (row && L.pos !== undefined) {
      row.querySelector("td.run-pos").textContent = fmtInt(L.pos || 0);
      row.querySelector("td.run-bpb").textContent = fmt(L.bpb);
    }
    $("speed").textContent = L.bytes_per_s && state === "running" ? `${fmtInt(Math.round(L.bytes_per_s))} B/s` : "–";
    const [, phase] = currentPhase(L.pos || 0);
    $("current-phase").textContent = phase ? phase.label : "–";
    const live = ["running", "paused", "finished", "starting"].includes(state) && S.run && !S.run.readonly;
    $("pause").disabled = !live || state !== "running";
    $("resume").disabled = !live || state === "running" || state === "finished";
    $("step-1").disabled = !live || state === "finished";
    $("step-n-go").disabled = !live || state === "finished";
    $("reset").disabled = !live;
    $("stop").disabled = !live;
    $("throttle").disabled = !live;
    $("sample-go").disabled = !live;
    const sel = $("throttle");
    const want = L.max_bytes_per_s ? String(Math.round(L.max_bytes_per_s)) : "";
    if (document.activeElement !== sel) {
      if (want && ![...sel.options].some((o) => o.value === want)) {
        sel.add(new Option(`${want} B/s`, want));
      }
      sel.value = want;
    }
    if (S.run) {
      for (const what of ["log", "summary", "checkpoint"]) {
        $(`export-${what}`).href = `/api/runs/${S.run.id}/export/${what}`;
      }
    }
  }

  function renderCounters() {
    const c = S.latest.counters || {};
    const items = [
      ["steps", c.steps], ["updates", c.updates], ["skipped", c.skipped],
      ["replay updates", c.replay_updates], ["forward", c.forward_passes], ["backward", c.backward_passes],
      ["lr", fmtLr(S.latest.lr)], ["grad norm", fmt(S.latest.grad_norm, 3)],
    ];
    $("counters").innerHTML = "";
    for (const [name, value] of items) {
      const span = document.createElement("span");
      span.append(`${name} `);
      const b = document.createElement("b");
      b.textContent = typeof value === "number" ? fmtInt(value) : (value ?? "–");
      span.append(b);
      $("counters").append(span);
    }
  }

  function renderCli() {
    if (!S.run) return;
    $("cli-text").textContent = S.run.cli;
    $("param-count").textContent = `This run: ${fmtInt(S.run.params)} parameters · ${S.run.label}`;
  }

  function renderAll() {
    renderDiagram();
    renderExperts();
    renderStatus();
    renderCounters();
    renderTopk();
    renderAttention();
    renderPhases();
    renderCli();
    S.chartDirty = true;
    drawCharts();
  }

  // ------------------------------------------------------------------ charts

  function phaseShapes(maxX) {
    const shapes = [];
    const annotations = [];
    const phases = (S.run && S.run.stream && S.run.stream.phases) || [];
    const labels = [...new Set(phases.map((p) => p.label))];
    phases.forEach((p, i) => {
      if (p.start >= maxX) return;
      const color = PHASE_FILL[labels.indexOf(p.label) % PHASE_FILL.length];
      const x1 = Math.min(p.end, maxX);
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: p.start, x1, y0: 0, y1: 1, fillcolor: color, line: { width: 0 }, layer: "below" });
      if (i > 0) {
        shapes.push({ type: "line", xref: "x", yref: "paper", x0: p.start, x1: p.start, y0: 0, y1: 1, line: { color: "#1f5fbf", width: 1.5, dash: "dot" } });
      }
      annotations.push({ x: (p.start + x1) / 2, y: 1, xref: "x", yref: "paper", yanchor: "bottom", text: p.label, showarrow: false, font: { size: 13, color: "#3b4350" } });
    });
    return { shapes, annotations };
  }

  function drawCharts() {
    if (!window.Plotly || !S.chartDirty || document.hidden) return;
    S.chartDirty = false;
    const t0 = performance.now();
    drawLoss();
    drawLr();
    S.drawMs = performance.now() - t0;
  }

  function drawLoss() {
    const L = S.hist.loss;
    const cx = [], cy = [], my = [], ex = [], ey = [], rx = [], sx = [];
    for (let i = 0; i < L.x.length; i++) {
      cx.push(L.x[i] + L.n[i] / 2);
      cy.push(L.mean[i]);
      my.push(L.max[i]);
      ex.push(L.x[i] + L.n[i]);
      ey.push(L.ema[i]);
      if (L.replays[i] > 0) rx.push(L.x[i] + L.n[i] / 2);
      if (L.skips[i] > 0) sx.push(L.x[i] + L.n[i] / 2);
    }
    const pos = S.latest.pos || 0;
    const traces = [
      { name: L.width > 1 ? `loss per byte (mean of ${L.width}-byte bins)` : "loss per byte", x: cx, y: cy, type: "scatter", mode: "markers", marker: { size: 3, color: "rgba(90,100,115,0.28)" }, hoverinfo: "x+y" },
      { name: "highest loss in bin", x: cx, y: my, type: "scatter", mode: "markers", visible: "legendonly", marker: { size: 3, color: "rgba(180,35,24,0.35)" }, hoverinfo: "x+y" },
      { name: "moving average", x: ex, y: ey, type: "scatter", mode: "lines", line: { color: "#1f5fbf", width: 2.5 } },
      { name: "bpb so far", x: S.hist.bpb.x, y: S.hist.bpb.y, type: "scatter", mode: "lines", line: { color: "#1b1f24", width: 1.5, dash: "dash" } },
    ];
    for (const [name, color] of BASELINES) {
      const pts = S.hist.baselines.filter((b) => b.bpb && b.bpb[name] !== null && b.bpb[name] !== undefined);
      traces.push({
        name: `${name} (same bytes)`, x: pts.map((b) => b.n), y: pts.map((b) => b.bpb[name]),
        type: "scatter", mode: "lines+markers", line: { color, width: 1.5, dash: "dot" }, marker: { size: 5 },
      });
    }
    for (const [id, c] of S.compare) {
      const C = c.loss;
      const x = [], y = [];
      for (let i = 0; i < C.x.length; i++) { x.push(C.x[i] + C.n[i]); y.push(C.ema[i]); }
      traces.push({ name: `${c.label} (avg)`, x, y, type: "scatter", mode: "lines", line: { color: c.color, width: 2 }, meta: id });
    }
    traces.push(
      { name: "shift alarm", x: S.hist.alarms.map((a) => a.pos), y: S.hist.alarms.map(() => 0.97), yaxis: "y2", type: "scatter", mode: "markers", marker: { symbol: "triangle-down", size: 11, color: "#b42318" }, hovertemplate: "alarm at byte %{x}<extra></extra>" },
      { name: "replay", x: rx, y: rx.map(() => 0.03), yaxis: "y2", type: "scatter", mode: "markers", marker: { symbol: "line-ns-open", size: 6, color: "rgba(29,122,70,0.6)" }, hovertemplate: "replay near byte %{x}<extra></extra>" },
      { name: "skipped update", x: sx, y: sx.map(() => 0.08), yaxis: "y2", type: "scatter", mode: "markers", marker: { symbol: "line-ns-open", size: 6, color: "rgba(161,92,0,0.7)" }, hovertemplate: "skipped update near byte %{x}<extra></extra>" },
    );
    const narrow = ($("loss-chart").clientWidth || 1000) < 600;
    let maxX = Math.max(pos, ...[...S.compare.values()].map((c) => c.pos || 0), 1);
    const { shapes, annotations } = phaseShapes(maxX);
    const layout = {
      uirevision: S.runId,
      datarevision: ++S.revision,
      margin: { l: 52, r: 16, t: 28, b: 42 },
      font: { family: "system-ui, sans-serif", size: 13, color: "#1b1f24" },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
      xaxis: { title: { text: narrow ? "" : "bytes read" }, gridcolor: "#eef1f4", zeroline: false, rangemode: "tozero", autorange: true },
      yaxis: { title: { text: "bits" }, range: [0, 10], gridcolor: "#eef1f4", zeroline: false },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      // anchored at its top below the axis title, so a legend that wraps (phones) grows down
      // on a phone the legend wraps into rows: the axis title goes into it so they never overlap
      legend: narrow
        ? { orientation: "h", y: -0.12, yanchor: "top", font: { size: 12 }, title: { text: "x axis: bytes read", side: "top" } }
        : { orientation: "h", y: -0.2, font: { size: 12 } },
      shapes, annotations,
      showlegend: true,
    };
    const gd = $("loss-chart");
    Plotly.react(gd, traces, layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
    gd.dataset.points = String(L.x.length);
    gd.dataset.lastX = String(ex.length ? ex[ex.length - 1] : 0);
  }

  function drawLr() {
    const l = S.hist.lr;
    const traces = [
      { name: "learning rate", x: l.x, y: l.lr, type: "scatter", mode: "lines", line: { color: "#1f5fbf", width: 2 } },
      { name: "gradient norm", x: l.x, y: l.grad_norm, yaxis: "y2", type: "scatter", mode: "lines", line: { color: "#a15c00", width: 1.5 }, connectgaps: false },
    ];
    const layout = {
      uirevision: S.runId,
      datarevision: ++S.revision, // the series grow in place: tell plotly they changed
      margin: { l: 60, r: 52, t: 10, b: 42 },
      font: { family: "system-ui, sans-serif", size: 12, color: "#1b1f24" },
      xaxis: { title: { text: "bytes read" }, gridcolor: "#eef1f4", zeroline: false, autorange: true },
      yaxis: { title: { text: "learning rate" }, gridcolor: "#eef1f4", zeroline: false, rangemode: "tozero", exponentformat: "e", autorange: true },
      yaxis2: { title: { text: "gradient norm" }, overlaying: "y", side: "right", zeroline: false, rangemode: "tozero", showgrid: false, autorange: true },
      legend: { orientation: "h", y: -0.28 },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    };
    Plotly.react($("lr-chart"), traces, layout, { displaylogo: false, responsive: true });
  }

  // ------------------------------------------------------------------ text shaded by surprisal

  function resetText() {
    $("stream-text").innerHTML = "";
    S.lastTextIndex = -1;
    S.utf8 = null;
    S.textQueue = [];
  }

  function shade(bits) {
    const a = Math.max(0, Math.min(1, bits / 10)) * 0.85;
    return `rgba(214, 69, 65, ${a.toFixed(3)})`;
  }

  function boundaryAt(index) {
    const phases = (S.run && S.run.stream && S.run.stream.phases) || [];
    for (let i = 1; i < phases.length; i++) if (phases[i].start === index) return phases[i].label;
    return null;
  }

  function appendText(items) {
    for (const item of items) S.textQueue.push(item);
    if (S.textQueue.length > TEXT_SPANS) S.textQueue = S.textQueue.slice(-TEXT_SPANS);
  }

  function flushText() {
    const items = S.textQueue;
    if (!items.length) return;
    S.textQueue = [];
    const box = $("stream-text");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const frag = document.createDocumentFragment();
    for (const [index, byte, bits] of items) {
      if (index <= S.lastTextIndex) continue;
      if (S.lastTextIndex >= 0 && index > S.lastTextIndex + 1) {
        const gap = document.createElement("span");
        gap.className = "gap";
        gap.textContent = `… ${fmtInt(index - S.lastTextIndex - 1)} bytes …`;
        frag.append(gap);
        S.utf8 = null;
      }
      S.lastTextIndex = index;
      const label = boundaryAt(index);
      if (label) {
        const chip = document.createElement("span");
        chip.className = "boundary";
        chip.textContent = `→ ${label}`;
        frag.append(chip);
      }
      const piece = decodeByte(index, byte, bits);
      if (!piece) continue;
      const span = document.createElement("span");
      span.style.background = shade(piece.bits);
      span.title = `byte ${piece.first}: ${piece.codes} · ${piece.bits.toFixed(2)} bits`;
      const won = S.winners.get(piece.first);
      if (won) {
        span.classList.add("won");
        span.style.setProperty("--won", expertColor(won.winner));
        span.title += ` · best predicted by ${won.name}`;
      }
      if (piece.text === "\n") { span.textContent = "↵\n"; span.className = "ctl"; }
      else if (piece.text === "\t") { span.textContent = "⇥ "; span.className = "ctl"; }
      else if (piece.control) { span.textContent = "·"; span.className = "ctl"; }
      else span.textContent = piece.text;
      frag.append(span);
    }
    box.append(frag);
    const extra = box.childNodes.length - TEXT_SPANS;
    if (extra > 0) {
      const range = document.createRange();
      range.setStartBefore(box.firstChild);
      range.setEndBefore(box.childNodes[extra]);
      range.deleteContents();
    }
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // Groups the bytes of one UTF-8 character so that "é" shows as one letter.
  function decodeByte(index, byte, bits) {
    if (S.utf8) {
      if ((byte & 0xc0) === 0x80) {
        S.utf8.bytes.push(byte);
        S.utf8.bits += bits;
        if (S.utf8.bytes.length < S.utf8.need) return null;
        const u = S.utf8;
        S.utf8 = null;
        let text;
        try { text = new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(u.bytes)); } catch (_) { text = "�"; }
        return { text, bits: u.bits, first: u.first, codes: u.bytes.join(" "), control: false };
      }
      S.utf8 = null;
    }
    if (byte >= 0xc0 && byte < 0xf8) {
      S.utf8 = { bytes: [byte], bits, first: index, need: byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : 2 };
      return null;
    }
    const control = (byte < 32 && byte !== 10 && byte !== 9) || byte === 127 || byte >= 128;
    return { text: String.fromCharCode(byte), bits, first: index, codes: String(byte), control };
  }

  // ------------------------------------------------------------------ next byte, attention

  function renderTopk() {
    const box = $("topk");
    box.innerHTML = "";
    const top = S.latest.topk || [];
    const truth = S.latest.next_byte;
    for (const [sym, p] of top) {
      const s = document.createElement("span");
      s.className = "sym" + (sym === truth ? " truth" : "");
      s.textContent = symbolText(sym);
      s.title = sym === truth ? "this is the byte that comes next in the stream" : `byte ${sym}`;
      const barWrap = document.createElement("span");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.display = "block";
      bar.style.width = `${Math.max(0.5, p * 100).toFixed(1)}%`;
      barWrap.append(bar);
      const pv = document.createElement("span");
      pv.className = "p";
      pv.textContent = `${(p * 100).toFixed(1)}%`;
      box.append(s, barWrap, pv);
    }
    if (top.length && truth !== null && truth !== undefined && !top.some(([sym]) => sym === truth)) {
      const note = document.createElement("span");
      note.style.gridColumn = "1 / -1";
      note.className = "hint";
      note.textContent = `next in the stream: ${symbolText(truth)} (not in the top 10)`;
      box.append(note);
    }
  }

  function renderAttention() {
    const box = $("attention");
    const att = S.latest.attention;
    box.innerHTML = "";
    if (!att || !att.layers) {
      box.innerHTML = '<p class="hint">Shown after the first steps.</p>';
      return;
    }
    const scale = att.scale || 1;
    const tokens = att.tokens || [];
    const multiLayer = att.layers.length > 1;
    for (const layer of att.layers) {
      layer.heads.forEach((map, h) => {
        const T = map.length;
        const fig = document.createElement("figure");
        const canvas = document.createElement("canvas");
        canvas.width = T;
        canvas.height = T;
        const ctx = canvas.getContext("2d");
        const img = ctx.createImageData(T, T);
        for (let q = 0; q < T; q++) {
          for (let k = 0; k < T; k++) {
            const v = Math.sqrt(Math.max(0, Math.min(1, map[q][k] / scale)));
            const o = (q * T + k) * 4;
            img.data[o] = 255 - v * (255 - 31);
            img.data[o + 1] = 255 - v * (255 - 95);
            img.data[o + 2] = 255 - v * (255 - 191);
            img.data[o + 3] = 255;
          }
        }
        ctx.putImageData(img, 0, 0);
        canvas.title = "rows: the position predicting; columns: the positions it looks at";
        canvas.addEventListener("mousemove", (ev) => {
          const r = canvas.getBoundingClientRect();
          const k = Math.floor(((ev.clientX - r.left) / r.width) * T);
          const q = Math.floor(((ev.clientY - r.top) / r.height) * T);
          if (q >= 0 && q < T && k >= 0 && k < T) {
            const off = tokens.length - T;
            const tq = tokens[q + off], tk = tokens[k + off];
            canvas.title = `${symbolText(tq ?? 32)} looks at ${symbolText(tk ?? 32)}: ${(map[q][k] / scale).toFixed(2)}`;
          }
        });
        const cap = document.createElement("figcaption");
        cap.textContent = multiLayer ? `layer ${layer.layer + 1} · head ${h + 1}` : `head ${h + 1}`;
        fig.append(canvas, cap);
        box.append(fig);
      });
    }
  }

  // ------------------------------------------------------------------ phases, events

  function labelIndex(label) {
    const phases = (S.run && S.run.stream && S.run.stream.phases) || [];
    return [...new Set(phases.map((p) => p.label))].indexOf(label);
  }

  function renderPhases() {
    const body = $("phase-table").querySelector("tbody");
    body.innerHTML = "";
    const rows = S.latest.phases || [];
    const [current] = currentPhase(S.latest.pos || 0);
    rows.forEach((r, i) => {
      const tr = document.createElement("tr");
      if (i === current && S.latest.state === "running") tr.className = "current";
      const len = r.end - r.start;
      let rec = "–";
      if (r.recovered === true) rec = `${fmtInt(r.recovery_bytes)} B`;
      else if (r.recovered === false) rec = r.complete ? "not recovered" : "not yet";
      const forget = r.forgetting_bpb === null || r.forgetting_bpb === undefined ? "–" : `${r.forgetting_bpb >= 0 ? "+" : ""}${r.forgetting_bpb.toFixed(3)}`;
      const cells = [
        String(i + 1), null, `${fmtInt(r.bytes_seen)} / ${fmtInt(len)}`, fmt(r.bpb), rec, forget,
      ];
      cells.forEach((text, c) => {
        const td = document.createElement("td");
        if (c === 1) {
          const sw = document.createElement("span");
          sw.className = "swatch";
          sw.style.background = PHASE_SWATCH[Math.max(0, labelIndex(r.label)) % PHASE_SWATCH.length];
          td.append(sw, r.label);
        } else {
          td.textContent = text;
          if (c >= 2) td.className = "num";
        }
        tr.append(td);
      });
      body.append(tr);
    });
  }

  function describeEvent(e) {
    const rest = Object.entries(e).filter(([k]) => !["pos", "step", "kind"].includes(k));
    if (e.kind === "mechanism") {
      const cfg = e.config ? Object.entries(e.config).map(([k, v]) => `${k}=${valueText(v)}`).join(", ") : "";
      return `${e.name} ${e.enabled ? "on" : "off"}${cfg ? ` (${cfg})` : ""}`;
    }
    if (e.kind === "set_lr") return `learning rate → ${fmtLr(e.lr)}`;
    if (e.kind === "engine") {
      const name = (b) => (b === "numba" ? "the compiled engine" : "the NumPy reference path");
      return `switched from ${name(e.previous)} to ${name(e.backend)}${e.reason ? ` (${e.reason})` : ""}; same weights and optimiser state`;
    }
    if (e.kind === "throttle") return e.max_bytes_per_s ? `speed cap → ${Math.round(e.max_bytes_per_s)} B/s` : "speed cap removed";
    return rest.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : valueText(v)}`).join(", ");
  }

  function addEvents(events) {
    const log = $("event-log");
    for (const e of events) {
      const li = document.createElement("li");
      const pos = document.createElement("span");
      pos.className = "pos";
      pos.textContent = `@${e.pos ?? "?"}`;
      const kind = document.createElement("span");
      kind.className = `kind ${e.kind}`;
      kind.textContent = e.kind;
      li.append(pos, kind, describeEvent(e));
      log.prepend(li);
    }
    while (log.childNodes.length > EVENTS_SHOWN) log.removeChild(log.lastChild);
  }

  // ------------------------------------------------------------------ mechanisms

  function schemaField(prop) {
    let p = prop;
    if (p.anyOf) p = p.anyOf.find((x) => x.type !== "null") || p.anyOf[0];
    if (p.enum) return { kind: "enum", options: p.enum };
    if (p.const !== undefined) return { kind: "enum", options: [p.const] };
    if (p.type === "boolean") return { kind: "bool" };
    if (p.type === "integer") return { kind: "int", min: p.minimum ?? (p.exclusiveMinimum !== undefined ? p.exclusiveMinimum + 1 : undefined), max: p.maximum ?? (p.exclusiveMaximum !== undefined ? p.exclusiveMaximum - 1 : undefined) };
    if (p.type === "number") return { kind: "float", min: p.minimum ?? p.exclusiveMinimum, max: p.maximum ?? p.exclusiveMaximum };
    return { kind: "text" };
  }

  function buildMechanisms() {
    const box = $("mechanisms");
    box.innerHTML = "";
    if (!S.mechanisms.length) {
      box.innerHTML = '<p class="hint">No mechanisms are installed.</p>';
      return;
    }
    for (const m of S.mechanisms) {
      const card = document.createElement("div");
      card.className = "mech";
      card.dataset.name = m.name;
      const head = document.createElement("header");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = m.name;
      name.title = m.doc || "";
      const pill = document.createElement("span");
      pill.className = `pill ${m.strict_online ? "strict" : "loose"}`;
      pill.textContent = m.strict_online ? "strict online" : "not strict online";
      pill.title = m.strict_online ? "learns only from the bytes as they arrive" : "trains on earlier data too (e.g. replay); its figures are not strictly prequential-online";
      const sw = document.createElement("label");
      sw.className = "switch";
      const box2 = document.createElement("input");
      box2.type = "checkbox";
      box2.dataset.testid = `mech-toggle-${m.name}`;
      box2.setAttribute("data-testid", `mech-toggle-${m.name}`);
      box2.addEventListener("change", () => sendMechanism(m.name, box2.checked));
      box2.setAttribute("aria-label", `${m.name} on or off`);
      sw.append(box2, name);
      head.append(sw, pill);
      const doc = document.createElement("p");
      doc.className = "doc";
      doc.textContent = m.doc || "";
      const params = document.createElement("div");
      params.className = "params";
      const props = (m.schema && m.schema.properties) || {};
      for (const [key, prop] of Object.entries(props)) {
        const f = schemaField(prop);
        const label = document.createElement("label");
        label.textContent = key;
        label.title = prop.description || "";
        let input;
        if (f.kind === "enum") {
          input = document.createElement("select");
          for (const o of f.options) input.add(new Option(String(o), String(o)));
        } else if (f.kind === "bool") {
          input = document.createElement("input");
          input.type = "checkbox";
        } else {
          input = document.createElement("input");
          input.type = f.kind === "text" ? "text" : "number";
          if (f.kind === "int") input.step = "1";
          if (f.kind === "float") input.step = "any";
          if (f.min !== undefined) input.min = String(f.min);
          if (f.max !== undefined) input.max = String(f.max);
        }
        input.dataset.key = key;
        input.dataset.kind = f.kind;
        setField(input, (m.defaults || {})[key]);
        label.append(input);
        params.append(label);
      }
      const actions = document.createElement("div");
      actions.className = "actions";
      const apply = document.createElement("button");
      apply.textContent = "Apply parameters";
      apply.addEventListener("click", () => sendMechanism(m.name, null));
      actions.append(apply);
      const fold = document.createElement("details");
      fold.className = "mech-params";
      const summary = document.createElement("summary");
      const count = Object.keys(props).length;
      summary.textContent = count ? `what it does · ${count} parameter${count > 1 ? "s" : ""}` : "what it does";
      fold.append(summary, doc, params);
      if (count) fold.append(actions);
      card.append(head, fold);
      box.append(card);
    }
    buildStartMechanisms();
  }

  function setField(input, value) {
    if (value === undefined) return;
    if (input.type === "checkbox") input.checked = Boolean(value);
    else input.value = value === null ? "" : String(value);
  }

  function readParams(card) {
    const out = {};
    for (const input of card.querySelectorAll(".params [data-key]")) {
      const key = input.dataset.key;
      const kind = input.dataset.kind;
      if (kind === "bool") out[key] = input.checked;
      else if (input.value === "") continue;
      else if (kind === "int") out[key] = parseInt(input.value, 10);
      else if (kind === "float") out[key] = Number(input.value);
      else if (kind === "enum") out[key] = parseValue(input.value);
      else out[key] = input.value;
    }
    return out;
  }

  async function sendMechanism(name, enabled) {
    const card = document.querySelector(`.mech[data-name="${CSS.escape(name)}"]`);
    const cmd = { type: "mechanism", name, params: readParams(card) };
    if (enabled !== null) cmd.enabled = enabled;
    const res = await run_(cmd);
    if (res && res.mechanisms) {
      S.run.mechanisms = res.mechanisms;
      syncMechanisms(res.mechanisms);
    } else if (!res) {
      syncMechanisms((S.run && S.run.mechanisms) || []);
    }
  }

  function syncMechanisms(list) {
    for (const card of document.querySelectorAll(".mech")) {
      const m = list.find((x) => x.name === card.dataset.name);
      const toggle = card.querySelector("header input[type=checkbox]");
      toggle.checked = Boolean(m && m.enabled);
      card.classList.toggle("on", Boolean(m && m.enabled));
      if (m && m.config) {
        for (const input of card.querySelectorAll(".params [data-key]")) {
          if (document.activeElement !== input) setField(input, m.config[input.dataset.key]);
        }
      }
      toggle.disabled = !S.run || S.run.readonly || !["running", "paused", "finished", "starting"].includes(S.run.state);
    }
    const startBoxes = document.querySelectorAll("#start-mechs input");
    for (const b of startBoxes) {
      const m = list.find((x) => x.name === b.value);
      b.checked = Boolean(m && m.enabled);
    }
  }

  function buildStartMechanisms() {
    const form = $("model-form");
    let wrap = $("start-mechs");
    if (!wrap) {
      wrap = document.createElement("fieldset");
      wrap.id = "start-mechs";
      wrap.className = "wide";
      wrap.style.border = "none";
      wrap.style.padding = "0";
      wrap.style.margin = "0";
      form.insertBefore(wrap, form.querySelector("label.check"));
    }
    wrap.innerHTML = "";
    const legend = document.createElement("span");
    legend.className = "hint";
    legend.textContent = "mechanisms on from the start: ";
    wrap.append(legend);
    for (const m of S.mechanisms) {
      const l = document.createElement("label");
      l.className = "check";
      l.style.display = "inline-flex";
      l.style.marginRight = "0.7rem";
      const b = document.createElement("input");
      b.type = "checkbox";
      b.value = m.name;
      l.append(b, ` ${m.name}`);
      wrap.append(l);
    }
  }

  // ------------------------------------------------------------------ model panel, new runs

  function fillModelForm(config) {
    const form = $("model-form");
    const m = config.model || {}, o = config.optim || {}, l = config.learner || {};
    const set = (name, v) => { if (v !== undefined && form.elements[name]) form.elements[name].value = String(v); };
    for (const k of ["n_layers", "d_model", "n_heads", "d_ff", "context", "activation"]) set(k, m[k]);
    set("optimizer", o.name);
    set("lr", o.lr);
    set("update_every", l.update_every);
    set("batch_streams", l.batch_streams ?? 1);
    if (l.substream_bytes) set("substream_bytes", l.substream_bytes);
    set("seed", config.seed ?? 0);
    $("live-lr").value = o.lr ?? "";
  }

  async function startNewRun(ev) {
    ev.preventDefault();
    const form = $("model-form");
    const f = form.elements;
    const num = (name) => Number(f[name].value);
    const base = (S.run && S.run.config) || {};
    const mechanisms = [];
    for (const b of document.querySelectorAll("#start-mechs input")) {
      if (!b.checked) continue;
      const card = document.querySelector(`.mech[data-name="${CSS.escape(b.value)}"]`);
      mechanisms.push({ name: b.value, ...readParams(card) });
    }
    let spec = $("stream-spec").value.trim();
    if (S.streams && spec === S.streams.default_spec) spec = "";
    const config = {
      model: { ...(base.model || {}), n_layers: num("n_layers"), d_model: num("d_model"), n_heads: num("n_heads"), d_ff: num("d_ff"), context: num("context"), activation: f.activation.value },
      optim: { ...(base.optim || {}), name: f.optimizer.value, lr: num("lr") },
      learner: {
        ...(base.learner || {}), update_every: num("update_every"), batch_streams: num("batch_streams"),
        // S only matters with B > 1; a single stream keeps the default
        substream_bytes: num("batch_streams") > 1 ? num("substream_bytes") : 0,
      },
      mechanisms, stream: spec, seed: num("seed"),
    };
    delete config.model.seed;
    delete config.model.vocab_size;
    delete config.learner.seed;
    const overlay = f.compare.checked ? S.run : null;
    $("new-run").disabled = true;
    try {
      const run = await createRun(config);
      S.formRunId = run.id;
      connect(run.id);
      if (overlay && overlay.id !== run.id) addCompare(overlay.id, overlay.label);
      notify(`Started ${run.label}.`, "info");
    } catch (err) {
      notify(err.message);
    } finally {
      $("new-run").disabled = false;
    }
  }

  // ------------------------------------------------------------------ comparisons

  function addCompare(id, label) {
    if (id === S.runId || S.compare.has(id)) return;
    const used = new Set([...S.compare.values()].map((c) => c.color));
    const color = COMPARE_COLORS.find((c) => !used.has(c)) || COMPARE_COLORS[0];
    const entry = { label: label || id, color, loss: emptyHistory().loss, pos: 0, ws: null };
    const ws = new WebSocket(wsUrl(`/ws/runs/${encodeURIComponent(id)}?lite=1`));
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      if (msg.type === "hello") {
        entry.loss = appendLoss(emptyHistory().loss, (msg.history || {}).loss);
        entry.label = msg.run.label;
        entry.pos = ((msg.history || {}).latest || {}).pos || 0;
      } else if (msg.type === "update") {
        entry.loss = appendLoss(entry.loss, msg.loss);
        entry.pos = msg.pos || entry.pos;
      }
      S.chartDirty = true;
    };
    entry.ws = ws;
    S.compare.set(id, entry);
    renderRunsTable();
  }

  function removeCompare(id) {
    const c = S.compare.get(id);
    if (c && c.ws) c.ws.close();
    S.compare.delete(id);
    S.chartDirty = true;
    renderRunsTable();
  }

  async function refreshRuns() {
    try {
      S.runs = await api("GET", "/api/runs");
    } catch (_) {
      return;
    }
    renderRunsTable();
  }

  function renderRunsTable() {
    const sel = $("run-select");
    const body = $("runs-table").querySelector("tbody");
    sel.innerHTML = "";
    body.innerHTML = "";
    for (const r of S.runs) {
      sel.add(new Option(`${r.label} — ${r.state}`, r.id, false, r.id === S.runId));
      const tr = document.createElement("tr");
      if (r.id === S.runId) tr.className = "viewing";
      const c0 = document.createElement("td");
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.checked = S.compare.has(r.id);
      cb.disabled = r.id === S.runId;
      cb.title = "overlay this run's moving average on the loss chart";
      cb.addEventListener("change", () => (cb.checked ? addCompare(r.id, r.label) : removeCompare(r.id)));
      if (S.compare.has(r.id)) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = S.compare.get(r.id).color;
        c0.append(sw);
      }
      c0.append(cb);
      const c1 = document.createElement("td");
      const a = document.createElement("a");
      a.href = "#";
      a.textContent = r.label;
      a.title = r.cli;
      a.addEventListener("click", (ev) => { ev.preventDefault(); connect(r.id); });
      c1.append(a);
      const c2 = document.createElement("td");
      c2.textContent = r.state;
      const c3 = document.createElement("td");
      const mine = r.id === S.runId && S.latest && S.latest.pos !== undefined;
      c3.className = "num run-pos";
      c3.textContent = fmtInt(mine ? S.latest.pos || 0 : r.pos);
      const c4 = document.createElement("td");
      c4.className = "num run-bpb";
      c4.textContent = fmt(mine ? S.latest.bpb : r.bpb);
      const c5 = document.createElement("td");
      if (["starting", "running", "paused", "finished"].includes(r.state) && !r.readonly) {
        const stop = document.createElement("button");
        stop.textContent = "Stop";
        stop.className = "danger";
        stop.addEventListener("click", () => stopRun(r.id));
        c5.append(stop);
      }
      tr.append(c0, c1, c2, c3, c4, c5);
      body.append(tr);
    }
  }

  async function stopRun(id) {
    try {
      await api("POST", `/api/runs/${encodeURIComponent(id)}/stop`);
    } catch (err) {
      notify(err.message);
    }
    refreshRuns();
  }


  // ------------------------------------------------------------------ what the server is doing

  // From page load on, the page asks the server what it is doing (GET /api/status): while
  // the engine's kernels compile, POST /api/runs and the socket's hello wait, so this notice
  // is the only sign of life. It stays up, with the elapsed time, until the run learns.
  async function pollStatus() {
    const engineBusy = !S.status || ["starting", "compiling"].includes(S.status.engine.state);
    if (engineBusy) {
      try { S.status = await api("GET", "/api/status"); } catch (_) { /* shown as waiting */ }
    }
    renderStatusNotice();
  }

  function renderStatusNotice() {
    const box = $("status-notice");
    const now = performance.now();
    const st = S.status;
    let text = "", phase = "";
    const engine = S.run && !S.run.readonly ? S.run.engine : null;
    if (st && ["starting", "compiling"].includes(st.engine.state)) {
      phase = "compiling";
      text = st.message;
    } else if (st && st.engine.state === "failed") {
      phase = "failed";
      text = st.message;
    } else if (engine && engine.state === "loading") {
      phase = "loading";
      text = "The compiled engine is ready: this run is loading its kernels and learns on the NumPy reference path until they are in.";
    } else if (engine && engine.state === "reference" && engine.detail) {
      phase = "reference";
      text = `This run learns on the NumPy reference path: ${engine.detail}.`;
    } else if (!S.run && now - S.loadedAt > 1500) {
      phase = "starting";
      text = `Starting a run: building its stream and model… ${Math.round((now - S.loadedAt) / 1000)} s`;
    } else if (S.run && !S.run.readonly && !S.firstUpdate && ["starting", "running"].includes(S.latest.state || S.run.state)
      && now - Math.max(S.helloAt, S.loadedAt) > 1500) {
      phase = "first-step";
      const since = Math.round((now - Math.max(S.helloAt, S.loadedAt)) / 1000);
      text = `Waiting for this run's first step: its stream is read and the kernels its configuration ` +
        `needs compile on first use (the strong preset's mixer takes longest the first time)… ${since} s`;
    }
    $("status-text").textContent = text;
    box.dataset.phase = phase;
    box.hidden = !text;
  }

  // ------------------------------------------------------------------ the model diagram

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function shapeText(shape) { return shape.join("×"); }

  function renderDiagram() {
    const box = $("diagram");
    const arch = S.run && S.run.architecture;
    if (!arch) { box.innerHTML = '<p class="hint">Drawn when the run starts.</p>'; return; }
    const view = S.latest.model_view || null;
    box.innerHTML = "";
    const residual = el("div", "residual");
    residual.append(el("b", null, `residual stream (${arch.d_model} numbers per position; bars on a log scale)`));
    const points = view ? view.stream : [];
    const top = Math.max(1e-9, ...points.map((p) => p.rms));
    if (!points.length) residual.append(el("span", "hint", "sizes appear after the first steps"));
    for (const p of points) {
      const row = el("div", "rrow");
      const label = el("span", null, `after ${p.after}`);
      const bar = el("div", "rbar");
      bar.style.width = `${Math.max(2, (100 * Math.log1p(p.rms)) / Math.log1p(top)).toFixed(0)}%`; // log scale: sizes span decades
      const wrap = el("div");
      wrap.append(label, bar);
      row.append(wrap, el("span", "num", `RMS ${p.rms.toFixed(2)}`));
      residual.append(row);
    }
    const flow = el("div", "flow");
    const layerViews = view ? view.layers : [];
    const arrow = () => el("span", "arrow", "↓");
    arch.parts.forEach((part, i) => {
      if (i) flow.append(arrow());
      const box2 = el("div", "part");
      box2.dataset.part = part.id;
      if (part.id.startsWith("block")) {
        box2.classList.add("block");
        box2.setAttribute("data-testid", "diagram-block");
        box2.append(el("h3", null, `${part.label} · ${fmtInt(part.params)} parameters · attention and MLP each add to the residual stream`));
        const lv = layerViews.find((l) => l.layer === part.layer);
        const att = el("div", "sub");
        att.append(el("b", null, `attention · ${part.attention.heads} heads × ${part.attention.head_dim}`));
        att.append(el("div", "meta", `${part.attention.tensors.map((t) => `${t[0].split(".").pop()} ${shapeText(t[1])}`).join(", ")} · ${fmtInt(part.attention.params)}`));
        const heads = el("div", "heads");
        for (let h = 0; h < part.attention.heads; h++) {
          const cell = el("div", "headcell");
          const hv = lv ? lv.heads[h] : null;
          cell.append(el("span", null, `h${h + 1}`));
          if (hv) {
            const maxBits = Math.log2(Math.max(2, view.positions));
            const sharp = Math.max(0, Math.min(1, 1 - hv.entropy_bits / maxBits));
            cell.style.background = `rgba(31,95,191,${(0.08 + 0.8 * sharp).toFixed(2)})`;
            cell.style.color = sharp > 0.55 ? "#fff" : "var(--ink)";
            cell.append(el("span", null, hv.back === 0 ? "self" : `←${hv.back}`));
            cell.title = `head ${h + 1}: looks most ${hv.back} position(s) back (weight ${hv.weight.toFixed(2)}); entropy ${hv.entropy_bits.toFixed(2)} bits`;
          }
          heads.append(cell);
        }
        att.append(heads);
        if (lv) att.append(el("div", "meta", `adds RMS ${lv.attn_rms.toFixed(2)}`));
        const mlp = el("div", "sub");
        mlp.append(el("b", null, `MLP ${arch.d_model}→${part.mlp.width}→${arch.d_model} · ${part.mlp.activation}`));
        mlp.append(el("div", "meta", `${part.mlp.tensors.map((t) => `${t[0].split(".").pop()} ${shapeText(t[1])}`).join(", ")} · ${fmtInt(part.mlp.params)}`));
        const meter = el("div", "meter");
        const fill = el("span");
        fill.style.width = lv ? `${(100 * lv.mlp_active).toFixed(0)}%` : "0%";
        meter.append(fill);
        mlp.append(meter);
        if (lv) mlp.append(el("div", "meta", `${(100 * lv.mlp_active).toFixed(0)}% of units fire · adds RMS ${lv.mlp_rms.toFixed(2)}`));
        box2.append(att, mlp);
      } else {
        box2.append(el("h3", null, part.label));
        box2.append(el("div", "meta", part.tensors.map((t) => `${t[0]} ${shapeText(t[1])}`).join(", ")));
        box2.append(el("div", "meta", `${fmtInt(part.params)} parameters → ${shapeText(part.out)}`));
        if (part.id === "embed" && view) {
          box2.append(el("div", "meta", `window: ${view.positions} symbols, …${view.tokens.slice(-8).map(symbolText).join("")}`));
        }
        if (part.id === "head" && view) {
          box2.append(el("div", "meta", `likeliest next: ${symbolText(view.head.top)} (${(100 * view.head.p).toFixed(1)}%), entropy ${view.head.entropy_bits.toFixed(2)} bits`));
        }
      }
      flow.append(box2);
    });
    const total = el("div", "meta total", `${fmtInt(arch.params)} parameters in all · context ${arch.context} · vocabulary ${arch.vocab}`);
    flow.append(total);
    box.append(residual, flow);
  }

  // ------------------------------------------------------------------ a mixture's experts

  // The worker sends the winner of every byte of the next step; they shade those bytes when
  // the stream text reaches them.
  function noteExperts(x) {
    const step = x.step && x.step.length ? x.step : (x.winner === null || x.winner === undefined ? [] : [[x.pos, x.byte, x.winner]]);
    for (const [pos, byte, winner] of step) {
      if (winner === null || winner === undefined) continue;
      if (!S.winners.has(pos)) S.winnerOrder.push(pos);
      S.winners.set(pos, { winner, name: x.names[winner], byte });
    }
    while (S.winnerOrder.length > WINNERS_KEPT) S.winners.delete(S.winnerOrder.shift());
  }

  function renderExperts() {
    const panel = $("experts-panel");
    const x = S.latest.experts;
    const mixing = S.run && (S.run.mechanisms || []).some((m) => m.name === "ngram_mix" && m.enabled);
    panel.hidden = !x && !mixing;
    const box = $("experts");
    if (!x) {
      const multi = S.run && S.run.config && S.run.config.learner && S.run.config.learner.batch_streams > 1;
      box.innerHTML = multi
        ? '<p class="hint">Not shown for a run that learns several sub-streams at once (B &gt; 1): its next step is B windows.</p>'
        : '<p class="hint">Shown after the first steps of a run with ngram_mix on.</p>';
      $("winner-strip").innerHTML = "";
      return;
    }
    box.innerHTML = "";
    const head = el("p", "head");
    if (x.byte === null || x.byte === undefined) head.textContent = "The stream has ended.";
    else {
      head.append(`byte ${fmtInt(x.pos)} about to be read: `);
      head.append(el("code", null, symbolText(x.byte)));
      head.append(` — mixed probability ${(100 * x.mixed).toFixed(2)}% (${x.bits.toFixed(2)} bits) · best: ${x.names[x.winner]} · weight set ${x.weight_set}`);
    }
    box.append(head);
    const table = el("table");
    const thead = el("thead");
    const hr = el("tr");
    for (const h of ["expert", "probability of this byte", "", "weight"]) hr.append(el("th", null, h));
    thead.append(hr);
    const body = el("tbody");
    x.names.forEach((name, i) => {
      const tr = el("tr");
      if (i === x.winner) tr.className = "winner";
      else if (!x.seen[i]) tr.className = "unseen";
      const c0 = el("td");
      const sw = el("i");
      sw.style.cssText = `display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;background:${expertColor(i)}`;
      c0.append(sw, name);
      if (!x.seen[i]) {
        c0.append(el("small", null, " · unseen"));
        c0.title = "this context was never seen: the order predicts every byte alike and adds nothing";
      }
      const p = x.p ? x.p[i] : null;
      const c1 = el("td");
      c1.style.width = "45%";
      const bar = el("div", "pbar");
      bar.style.width = `${Math.max(0.3, 100 * (p || 0)).toFixed(1)}%`;
      bar.style.background = expertColor(i);
      c1.append(bar);
      const c2 = el("td", "num", p === null ? "–" : `${(100 * p).toFixed(2)}%`);
      const c3 = el("td", "num", x.weights[i].toFixed(3));
      tr.append(c0, c1, c2, c3);
      body.append(tr);
    });
    table.append(thead, body);
    box.append(table);
    const strip = $("winner-strip");
    strip.innerHTML = "";
    for (const pos of S.winnerOrder.slice(-80)) {
      const w = S.winners.get(pos);
      const s2 = el("span", null, symbolText(w.byte));
      s2.style.background = expertColor(w.winner);
      s2.title = `byte ${pos}: best predicted by ${w.name}`;
      strip.append(s2);
    }
  }

  // ------------------------------------------------------------------ racing another preset

  function fillRacePresets() {
    const sel = $("race-preset");
    const current = S.run && S.run.config ? S.run.config.preset : null;
    const keep = S.raceChosen ? sel.value : null;
    sel.innerHTML = "";
    for (const p of S.presets) {
      const o = new Option(p.name, p.name);
      o.title = `${fmtInt(p.params)} parameters, ${p.update_every} byte(s) per step${p.mechanisms.length ? ", " + p.mechanisms.join(" + ") : ""}`;
      sel.add(o);
    }
    const other = S.presets.find((p) => p.name !== current);
    if (keep && S.presets.some((p) => p.name === keep)) sel.value = keep;
    else if (other) sel.value = other.name;
  }

  async function race() {
    if (!S.run) return;
    const preset = $("race-preset").value;
    const stream = (S.run.stream && S.run.stream.spec) || S.run.config.stream || "";
    $("race-go").disabled = true;
    try {
      const run = await createRun({ preset, stream, seed: S.run.config.seed || 0 }, `race · ${preset}`);
      addCompare(run.id, run.label);
      $("race-note").textContent = `${run.label} reads the same stream; its moving average is the coloured line.`;
    } catch (err) {
      notify(err.message);
    } finally {
      $("race-go").disabled = false;
    }
  }

  // ------------------------------------------------------------------ stream editor

  function sourceOptions() {
    return (S.streams && S.streams.sources) || [];
  }

  function takesArgument(usage) {
    return /:(PATH|TEXT)$/.test(usage);
  }

  function rowSource(row) {
    if (!takesArgument(row.usage)) return row.usage;
    const kind = row.usage.split(":")[0];
    return `${kind}:${row.arg.replace(/,/g, "\\,")}`;
  }

  function rowsToSpec(rows) {
    return rows
      .filter((r) => r.usage)
      .map((r) => `${r.label ? r.label + "=" : ""}${rowSource(r)}${r.budget ? ":" + r.budget : ""}`)
      .join(",");
  }

  function splitPhases(spec) {
    const out = [];
    let cur = "";
    for (let i = 0; i < spec.length; i++) {
      if (spec[i] === "\\" && spec[i + 1] === ",") { cur += ","; i++; continue; }
      if (spec[i] === ",") { out.push(cur.trim()); cur = ""; continue; }
      cur += spec[i];
    }
    if (cur.trim()) out.push(cur.trim());
    return out;
  }

  const SIZE_RE = /^\d+(\.\d+)?\s*(k|K|M|G|Ki|Mi|Gi)?B?$|^all$/;

  function specToRows(spec) {
    const rows = [];
    for (const token of splitPhases(spec)) {
      let label = "", rest = token;
      const eq = token.indexOf("="), colon = token.indexOf(":");
      if (eq > 0 && (colon < 0 || eq < colon)) { label = token.slice(0, eq); rest = token.slice(eq + 1); }
      const kind = rest.split(":")[0];
      const option = sourceOptions().find((o) => o.usage.split(":")[0] === kind && (kind !== "tinystories" || rest.startsWith(o.usage)));
      const usage = option ? option.usage : kind;
      let arg = "", budget = "";
      if (takesArgument(usage)) {
        arg = rest.slice(kind.length + 1);
        const last = arg.lastIndexOf(":");
        if (last >= 0 && SIZE_RE.test(arg.slice(last + 1))) { budget = arg.slice(last + 1); arg = arg.slice(0, last); }
      } else {
        const tail = rest.slice(usage.length);
        if (tail.startsWith(":")) budget = tail.slice(1);
      }
      rows.push({ label, usage, arg, budget });
    }
    return rows;
  }

  function setSpec(spec) {
    $("stream-spec").value = spec;
    S.rows = specToRows(spec);
    renderPhaseEditor();
  }

  function renderPhaseEditor() {
    const body = $("phase-editor").querySelector("tbody");
    body.innerHTML = "";
    S.rows.forEach((row, i) => {
      const tr = document.createElement("tr");
      const label = document.createElement("input");
      label.value = row.label;
      label.placeholder = "label";
      label.addEventListener("change", () => { row.label = label.value.trim(); syncSpec(); });
      const source = document.createElement("select");
      for (const o of sourceOptions()) source.add(new Option(o.usage, o.usage));
      if (row.usage && ![...source.options].some((o) => o.value === row.usage)) source.add(new Option(row.usage, row.usage));
      source.value = row.usage;
      source.addEventListener("change", () => {
        row.usage = source.value;
        const o = sourceOptions().find((x) => x.usage === source.value);
        $("source-help").textContent = o ? `${o.usage}: ${o.help}` : "";
        renderPhaseEditor();
        syncSpec();
      });
      const arg = document.createElement("input");
      arg.value = row.arg;
      arg.disabled = !takesArgument(row.usage);
      arg.placeholder = takesArgument(row.usage) ? row.usage.split(":")[1].toLowerCase() : "";
      arg.addEventListener("change", () => { row.arg = arg.value; syncSpec(); });
      const budget = document.createElement("input");
      budget.value = row.budget;
      budget.placeholder = "e.g. 50k";
      budget.size = 7;
      budget.addEventListener("change", () => { row.budget = budget.value.trim(); syncSpec(); });
      const del = document.createElement("button");
      del.textContent = "Remove";
      del.addEventListener("click", () => { S.rows.splice(i, 1); renderPhaseEditor(); syncSpec(); });
      for (const el of [label, source, arg, budget, del]) {
        const td = document.createElement("td");
        td.append(el);
        tr.append(td);
      }
      body.append(tr);
    });
  }

  function syncSpec() {
    $("stream-spec").value = rowsToSpec(S.rows);
  }

  async function uploadPhase() {
    const fileInput = $("upload-file");
    const pasted = $("upload-text").value;
    const label = $("upload-label").value.trim() || "mine";
    const form = new FormData();
    if (fileInput.files && fileInput.files.length) {
      form.append("file", fileInput.files[0], fileInput.files[0].name);
    } else if (pasted.trim()) {
      form.append("file", new Blob([pasted], { type: "text/plain" }), `${label}.txt`);
    } else {
      notify("Choose a file or paste some text first.");
      return;
    }
    form.append("label", label);
    try {
      const up = await api("POST", "/api/uploads", form);
      const path = up.source.slice("file:".length).replace(/\\,/g, ",");
      S.rows.push({ label: up.label, usage: "file:PATH", arg: path, budget: "" });
      renderPhaseEditor();
      syncSpec();
      fileInput.value = "";
      $("upload-text").value = "";
      notify(`Added phase '${up.label}' (${fmtInt(up.bytes)} bytes). Start a new run to learn it.`, "info");
    } catch (err) {
      notify(err.message);
    }
  }

  // ------------------------------------------------------------------ clipboard

  async function copyText(text, what) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      try { document.execCommand("copy"); } catch (__) { /* shown below */ }
      area.remove();
    }
    notify(`${what} copied: ${text}`, "info");
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("notice-close").addEventListener("click", () => { $("notice").hidden = true; });
    $("pause").addEventListener("click", () => run_({ type: "pause" }));
    $("resume").addEventListener("click", () => run_({ type: "resume" }));
    $("step-1").addEventListener("click", () => run_({ type: "step", bytes: 1 }));
    $("step-n-go").addEventListener("click", () => run_({ type: "step", bytes: Math.max(1, parseInt($("step-n").value, 10) || 1) }));
    $("throttle").addEventListener("change", (ev) => {
      const v = ev.target.value;
      run_({ type: "throttle", max_bytes_per_s: v ? Number(v) : null });
    });
    $("reset").addEventListener("click", () => run_({ type: "reset" }));
    $("stop").addEventListener("click", () => S.run && stopRun(S.run.id));
    $("run-select").addEventListener("change", (ev) => connect(ev.target.value));
    $("copy-link").addEventListener("click", () => copyText(location.href, "Link"));
    $("copy-cli").addEventListener("click", () => S.run && copyText(S.run.cli, "Command"));
    $("sample-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $("sample-output");
      out.textContent = "sampling…";
      const seedText = $("sample-seed").value;
      const res = await run_({
        type: "sample",
        prompt: $("sample-prompt").value,
        temperature: Number($("sample-temperature").value) || 1,
        top_k: parseInt($("sample-top-k").value, 10) || 0,
        top_p: Number($("sample-top-p").value) || 1,
        length: parseInt($("sample-length").value, 10) || 1,
        seed: seedText === "" ? null : parseInt(seedText, 10),
      });
      out.textContent = res ? res.prompt + res.text : "";
      out.dataset.atByte = res ? String(res.at_byte) : "";
    });
    $("model-form").addEventListener("submit", startNewRun);
    $("live-lr-go").addEventListener("click", () => {
      const lr = Number($("live-lr").value);
      if (!(lr > 0)) { notify("The learning rate must be a positive number, e.g. 0.01."); return; }
      run_({ type: "set_lr", lr });
    });
    $("add-phase").addEventListener("click", () => {
      S.rows.push({ label: "", usage: "stdlib-prose", arg: "", budget: "20k" });
      renderPhaseEditor();
      syncSpec();
    });
    $("default-stream").addEventListener("click", () => S.streams && setSpec(S.streams.default_spec));
    $("stream-spec").addEventListener("change", () => { S.rows = specToRows($("stream-spec").value); renderPhaseEditor(); });
    $("upload-go").addEventListener("click", uploadPhase);
    $("race-go").addEventListener("click", race);
    $("race-preset").addEventListener("change", () => { S.raceChosen = true; });
    $("open-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const path = $("open-path").value.trim();
      if (!path) return;
      try {
        const run = await api("POST", "/api/runs/open", { path });
        await refreshRuns();
        connect(run.id);
      } catch (err) {
        notify(err.message);
      }
    });
  }

  async function chooseRun() {
    const runs = await api("GET", "/api/runs");
    S.runs = runs;
    const params = new URLSearchParams(location.search);
    const wanted = params.get("run");
    const fromUrl = queryToConfig(params);
    const same = (r) => canonicalQuery(configToQuery(r.config)) === canonicalQuery(params);
    const usable = (r) => r.state !== "failed";
    if (wanted) {
      const r = runs.find((x) => x.id === wanted && usable(x));
      if (r && (!fromUrl || same(r))) return r.id;
    }
    if (fromUrl) {
      const r = runs.find((x) => usable(x) && !x.readonly && same(x));
      if (r) return r.id;
      return (await createRun(fromUrl)).id;
    }
    const live = runs.filter(usable);
    if (live.length) return live[live.length - 1].id;
    return (await createRun({})).id;
  }

  async function main() {
    wire();
    pollStatus();
    setInterval(pollStatus, 1000);
    try {
      const [settings, mechanisms, streams] = await Promise.all([
        api("GET", "/api/settings"), api("GET", "/api/mechanisms"), api("GET", "/api/streams"),
      ]);
      S.settings = settings;
      S.mechanisms = mechanisms;
      S.streams = streams;
      $("sample-length").title = `at most ${settings.max_sample_bytes} bytes on this server`;
    } catch (err) {
      notify(`Cannot reach the server: ${err.message}`);
      return;
    }
    buildMechanisms();
    setSpec(S.streams.default_spec);
    api("GET", "/api/presets").then((p) => { S.presets = p; fillRacePresets(); }).catch(() => {});
    setInterval(tick, 250);
    setInterval(refreshRuns, 3000);
    try {
      const id = await chooseRun();
      await refreshRuns();
      connect(id);
    } catch (err) {
      notify(err.message);
      await refreshRuns();
      const any = S.runs.filter((r) => r.state !== "failed");
      if (any.length) connect(any[any.length - 1].id);
    }
  }

  window.mugptLab = S; // for the curious: the page's state, in the browser console
  main();
})();
