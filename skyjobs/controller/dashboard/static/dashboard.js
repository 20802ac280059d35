// skyjobs dashboard: the few behaviours the server-rendered pages need. No inline scripts
// (the Content-Security-Policy allows only files from /ui/static/), no build step.
"use strict";

(function () {
  const STATE_COLORS = {
    PENDING: "#94a3b8", PROVISIONING: "#a78bfa", RUNNING: "#22c55e", RECOVERING: "#f59e0b",
    CANCELLING: "#fb7185", SUCCEEDED: "#16a34a", FAILED: "#dc2626",
    FAILED_NO_RESOURCE: "#b91c1c", CANCELLED: "#64748b",
  };
  const SPOT = "#2563eb";
  const ON_DEMAND = "#c2410c";
  const POLL_MS = 2000;

  function toLogin() {
    window.location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { toLogin(); throw new Error("login needed"); }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function fmtDuration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  }
  const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString();
  const money = (v) => "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(4));

  // --- confirmations: <form data-confirm="..."> asks before it submits -------------------
  document.addEventListener("submit", (e) => {
    const form = e.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });

  // --- Jobs filters: change the live table in place, keep the URL shareable -------------
  function setupFilters(form) {
    let timer = null;
    const apply = () => {
      const params = new URLSearchParams(new FormData(form));
      for (const [k, v] of [...params]) if (!v) params.delete(k);
      history.replaceState(null, "", "/ui/jobs" + (params.toString() ? "?" + params : ""));
      window.htmx.ajax("GET", "/ui/jobs/table?" + params, { target: "#jobs-live", swap: "outerHTML" });
    };
    form.addEventListener("change", apply);
    form.addEventListener("input", (e) => {
      if (e.target.name !== "name") return;
      clearTimeout(timer);
      timer = setTimeout(apply, 300);
    });
    form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  }

  // --- the job timeline ---------------------------------------------------------------
  function barItem(row, start, end, extra) {
    return { value: [row, start * 1000, Math.max(end, start) * 1000], ...extra };
  }

  function renderBar(heightShare) {
    return function (params, api) {
      const row = api.value(0);
      const a = api.coord([api.value(1), row]);
      const b = api.coord([api.value(2), row]);
      const h = api.size([0, 1])[1] * heightShare;
      const shape = window.echarts.graphic.clipRectByRect(
        { x: a[0], y: a[1] - h / 2, width: Math.max(b[0] - a[0], 3), height: h },
        { x: params.coordSys.x, y: params.coordSys.y, width: params.coordSys.width, height: params.coordSys.height });
      if (!shape) return null;
      const style = api.style();
      const children = [{ type: "rect", shape, style }];
      const label = api.value(3);
      if (label && shape.width > 8 * String(label).length + 10) {
        children.push({ type: "text", style: {
          x: shape.x + 6, y: shape.y + shape.height / 2, text: String(label),
          fill: "#fff", font: "600 12px system-ui, sans-serif", verticalAlign: "middle" } });
      }
      return { type: "group", children };
    };
  }

  function timelineOption(d) {
    const rows = ["Job state", ...d.rows];
    const rowOf = (r) => rows.indexOf(r);
    const states = d.states.map((s) => ({
      value: [0, s.start * 1000, Math.max(s.end, s.start) * 1000, s.state],
      itemStyle: { color: STATE_COLORS[s.state] || "#94a3b8" }, info: s }));
    const prov = [], spot = [], od = [];
    for (const b of d.bars) {
      const row = rowOf(b.row);
      const ranAt = b.running_at == null ? b.end : Math.min(b.running_at, b.end);
      if (ranAt > b.start) prov.push(barItem(row, b.start, ranAt, { info: b, phase: "provisioning" }));
      if (b.running_at != null) {
        const item = { value: [row, ranAt * 1000, b.end * 1000, "#" + b.n], info: b, phase: "running" };
        (b.spot ? spot : od).push(item);
      }
    }
    const notices = d.marks.filter((m) => m.kind === "notice").map((m) => ({
      value: [m.at * 1000, rowOf(m.row)], info: m }));
    const preemptions = d.marks.filter((m) => m.kind === "preemption").map((m) => ({
      value: [m.at * 1000, rowOf(m.row)], info: m }));
    const custom = (name, data, color, share, extraStyle) => ({
      type: "custom", name, data, renderItem: renderBar(share),
      itemStyle: { color, ...(extraStyle || {}) }, encode: { x: [1, 2], y: 0 },
      clip: true,
    });
    const series = [
      custom("Job state", states, "#94a3b8", 0.5),
      custom("Provisioning", prov, "rgba(100,116,139,0.25)", 0.55,
        { borderColor: "#64748b", borderWidth: 1, borderType: "dashed" }),
      custom("Spot", spot, SPOT, 0.55),
      custom("On-demand", od, ON_DEMAND, 0.55),
      { type: "scatter", name: "Preemption notice", data: notices, symbol: "triangle",
        symbolRotate: 180, symbolSize: 14, symbolOffset: [0, -16], itemStyle: { color: "#f59e0b",
          borderColor: "#78350f", borderWidth: 1 }, z: 5 },
      { type: "scatter", name: "Preempted", data: preemptions,
        symbol: "path://M2,0 L5,3 L8,0 L10,2 L7,5 L10,8 L8,10 L5,7 L2,10 L0,8 L3,5 L0,2 Z",
        symbolSize: 14, itemStyle: { color: "#dc2626", borderColor: "#fff", borderWidth: 1 }, z: 6 },
    ];
    if (d.live) {
      series[0].markLine = { silent: true, symbol: "none", label: { formatter: "now" },
        lineStyle: { color: "#475569", type: "dashed" }, data: [{ xAxis: d.now * 1000 }] };
    }
    const span = Math.max(d.end - d.start, 60);
    return {
      animation: false,
      grid: { left: 150, right: 30, top: 36, bottom: 70 },
      legend: { top: 0, data: ["Spot", "On-demand", "Provisioning", "Preemption notice", "Preempted"] },
      tooltip: { trigger: "item", confine: true, formatter: tooltip },
      dataZoom: [
        { type: "slider", xAxisIndex: 0, filterMode: "weakFilter", height: 18, bottom: 10 },
        { type: "inside", xAxisIndex: 0, filterMode: "weakFilter" },
      ],
      xAxis: { type: "time", min: (d.start - span * 0.02) * 1000, max: (d.end + span * 0.04) * 1000,
        axisLabel: { hideOverlap: true }, splitLine: { show: true, lineStyle: { color: "#eef2f7" } } },
      yAxis: { type: "category", data: rows, inverse: true, axisTick: { show: false },
        splitLine: { show: true, lineStyle: { color: "#eef2f7" } },
        axisLabel: { fontWeight: (v) => (v === "Job state" ? "bold" : "normal") } },
      series,
    };
  }

  function tooltip(p) {
    const i = p.data && p.data.info;
    if (!i) return "";
    if (p.seriesName === "Job state") {
      return `<b>${esc(i.state)}</b> for ${fmtDuration(i.end - i.start)}<br>` +
        `${fmtTime(i.start)} – ${fmtTime(i.end)}<br>${esc(i.reason || "")}`;
    }
    if (p.seriesName === "Preemption notice") {
      return `<b>Preemption notice</b> (attempt ${i.n})<br>${fmtTime(i.at)}` +
        (i.deadline ? `<br>deadline ${fmtTime(i.deadline)}` : "");
    }
    if (p.seriesName === "Preempted") return `<b>Preempted</b> (attempt ${i.n})<br>${fmtTime(i.at)}`;
    const phase = p.data.phase === "provisioning" ? "provisioning" : "running";
    return `<b>Attempt ${i.n}</b> · ${phase}` + (i.tasks > 1 ? ` · task ${i.task}/${i.tasks}` : "") +
      `<br>${esc(i.placement)}` +
      (i.nodes > 1 ? ` ×${i.nodes}` : "") +
      `<br>${fmtTime(i.start)} – ${i.open ? "now" : fmtTime(i.end)} (${fmtDuration(i.end - i.start)})` +
      `<br>${i.spot ? "spot" : "on-demand"} at $${i.price_per_hour.toFixed(3)}/h · cost ${money(i.cost)}` +
      (i.end_reason ? `<br>ended: ${esc(i.end_reason)}` + (i.exit_code != null ? ` (exit ${i.exit_code})` : "") : "");
  }

  function setupTimeline(el) {
    const chart = window.echarts.init(el);
    window.addEventListener("resize", () => chart.resize());
    let timer = null;
    let first = true;
    async function load() {
      let d;
      try { d = await getJSON(el.dataset.url); } catch (err) { return; }
      el.style.height = (130 + 46 * (d.rows.length + 1)) + "px";
      chart.resize();
      const opt = timelineOption(d);
      if (!first) { delete opt.dataZoom; delete opt.xAxis.min; delete opt.xAxis.max; }
      // Keep the reader's zoom across refreshes: only the first load sets the range.
      chart.setOption(opt, { replaceMerge: ["series"] });
      if (!first) {
        const span = Math.max(d.end - d.start, 60);
        chart.setOption({ xAxis: { min: (d.start - span * 0.02) * 1000, max: (d.end + span * 0.04) * 1000 } });
      }
      first = false;
      el.dataset.loaded = String(d.bars.length);
      el.dataset.status = d.status;
      document.dispatchEvent(new CustomEvent("skyjobs:timeline", { detail: d }));
      if (!d.live && timer) { clearInterval(timer); timer = null; }
    }
    load();
    timer = setInterval(load, POLL_MS);
  }

  // --- logs per attempt and node, with follow -------------------------------------------
  function setupLogs(section) {
    const url = section.dataset.url;
    const pre = section.querySelector("#log-text");
    const attemptSel = section.querySelector("#log-attempt");
    const rankSel = section.querySelector("#log-rank");
    const follow = section.querySelector("#log-follow");
    const status = section.querySelector("#log-status");
    let bars = [];
    let shown = null; // {key, attempt, offset}
    let busy = false;
    let done = false;

    document.addEventListener("skyjobs:timeline", (e) => {
      bars = e.detail.bars;
      const keep = attemptSel.value;
      const options = ['<option value="">latest</option>'].concat(bars.map((b) =>
        `<option value="${b.n}">#${b.n} ${esc(b.placement)}</option>`));
      if (attemptSel.options.length !== options.length) {
        attemptSel.innerHTML = options.join("");
        attemptSel.value = keep;
      }
      updateRanks();
    });

    function updateRanks() {
      const n = attemptSel.value ? Number(attemptSel.value) : (bars.length ? bars[bars.length - 1].n : 1);
      const bar = bars.find((b) => b.n === n);
      const nodes = bar ? bar.nodes : 1;
      if (rankSel.options.length !== nodes) {
        const keep = rankSel.value;
        rankSel.innerHTML = Array.from({ length: nodes }, (_, r) => `<option value="${r}">${r}</option>`).join("");
        rankSel.value = Number(keep) < nodes ? keep : "0";
      }
    }

    function append(text) {
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      pre.append(document.createTextNode(text));
      // Bounded: a long follow keeps the last ~2 MB in the page.
      if (pre.textContent.length > 2_000_000) pre.textContent = pre.textContent.slice(-1_500_000);
      if (follow.checked && atBottom) pre.scrollTop = pre.scrollHeight;
    }

    async function tick() {
      if (busy) return;
      busy = true;
      try {
        const key = attemptSel.value + "/" + rankSel.value;
        if (!shown || shown.key !== key) {
          pre.textContent = "";
          shown = { key, attempt: null, offset: null };
          done = false;
        }
        const q = new URLSearchParams({ rank: rankSel.value || "0" });
        if (attemptSel.value) q.set("attempt", attemptSel.value);
        if (shown.offset != null) q.set("offset", shown.offset);
        const d = await getJSON(url + "?" + q);
        if (shown.key !== key) return; // the reader switched meanwhile
        if (shown.attempt != null && d.attempt !== shown.attempt) {
          // "latest" moved on to a new attempt: start its log from the top.
          append(`\n──── attempt ${d.attempt} ────\n`);
          shown.attempt = d.attempt;
          shown.offset = 0;
          return;
        }
        shown.attempt = d.attempt;
        if (d.truncated && shown.offset == null) append(`… (earlier output not shown; ${d.offset} bytes)\n`);
        if (d.data) append(d.data);
        shown.offset = d.next_offset;
        status.textContent = `attempt ${d.attempt}, node ${d.rank} · ${d.size} bytes` +
          (d.live ? (follow.checked ? " · following" : "") : " · job ended");
        done = !d.live && d.next_offset >= d.size;
        pre.dataset.attempt = String(d.attempt);
      } catch (err) {
        status.textContent = String(err.message || err);
      } finally {
        busy = false;
      }
    }

    attemptSel.addEventListener("change", () => { updateRanks(); tick(); });
    rankSel.addEventListener("change", tick);
    follow.addEventListener("change", () => { if (follow.checked) { pre.scrollTop = pre.scrollHeight; tick(); } });
    tick();
    setInterval(() => { if (follow.checked && !done) tick(); }, 1000);
  }

  // --- zones heat map ------------------------------------------------------------------
  const METRICS = {
    hazard_per_hour: { label: "preemptions / hour", fmt: (v) => v.toFixed(2), colors: ["#f0fdf4", "#fde68a", "#f97316", "#b91c1c"] },
    p_no_capacity: { label: "chance of no capacity now", fmt: (v) => (v * 100).toFixed(0) + "%", colors: ["#f0fdf4", "#fde68a", "#f97316", "#b91c1c"] },
    spot_price: { label: "spot $/hour", fmt: (v) => "$" + v.toFixed(3), colors: ["#eff6ff", "#93c5fd", "#2563eb", "#1e3a8a"] },
  };

  function setupHeatmap(el) {
    const chart = window.echarts.init(el);
    window.addEventListener("resize", () => chart.resize());
    let rows = [];
    let metric = "hazard_per_hour";
    function draw() {
      const zones = [...new Set(rows.map((r) => r.cloud + "/" + r.zone))];
      const types = [...new Set(rows.map((r) => r.instance_type + (r.accelerator ? " (" + r.accelerator + ")" : "")))];
      const m = METRICS[metric];
      const data = rows.filter((r) => r[metric] != null).map((r) => ({
        value: [zones.indexOf(r.cloud + "/" + r.zone),
          types.indexOf(r.instance_type + (r.accelerator ? " (" + r.accelerator + ")" : "")), r[metric]],
        info: r }));
      const max = Math.max(1e-9, ...data.map((d) => d.value[2]));
      el.style.height = Math.max(260, 110 + 34 * types.length) + "px";
      chart.resize();
      chart.setOption({
        animation: false,
        grid: { left: 200, right: 110, top: 10, bottom: 80 },
        tooltip: { confine: true, formatter: (p) => {
          const r = p.data.info;
          return `<b>${esc(r.cloud)}/${esc(r.zone)}</b> · ${esc(r.instance_type)}<br>` +
            `~${r.hazard_per_hour.toFixed(2)} preemptions/h · ${(r.p_no_capacity * 100).toFixed(0)}% no capacity now` +
            ` (${(r.long_run_no_capacity * 100).toFixed(0)}% long run)<br>` +
            `${r.preemptions} preemptions, ${r.capacity_failures} capacity failures, ${r.launches} launches<br>` +
            `spot ${r.spot_price != null ? "$" + r.spot_price.toFixed(3) + "/h (" + esc(r.price_status) + ")" : "-"}` +
            ` · on-demand $${r.ondemand_price.toFixed(3)}/h`;
        } },
        xAxis: { type: "category", data: zones, axisTick: { show: false },
          axisLabel: { rotate: zones.length > 6 ? 35 : 0 }, splitArea: { show: true } },
        yAxis: { type: "category", data: types, axisTick: { show: false }, splitArea: { show: true } },
        visualMap: { min: 0, max, calculable: true, orient: "vertical", right: 10, top: "center",
          inRange: { color: m.colors }, formatter: (v) => m.fmt(v) },
        series: [{ type: "heatmap", name: m.label, data,
          label: { show: zones.length <= 12, formatter: (p) => m.fmt(p.value[2]), fontSize: 11 },
          itemStyle: { borderColor: "#fff", borderWidth: 2 },
          emphasis: { itemStyle: { borderColor: "#0f172a", borderWidth: 1 } } }],
      }, { notMerge: true });
      el.dataset.cells = String(data.length);
    }
    document.querySelectorAll("#heat-metric button").forEach((b) => b.addEventListener("click", () => {
      metric = b.dataset.metric;
      document.querySelectorAll("#heat-metric button").forEach((x) => x.classList.toggle("on", x === b));
      draw();
    }));
    async function load() {
      try { rows = (await getJSON(el.dataset.url)).rows; } catch (err) { return; }
      draw();
    }
    load();
    setInterval(load, 10000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const filters = document.querySelector("form.filters[data-autosubmit]");
    if (filters) setupFilters(filters);
    const tl = document.getElementById("timeline");
    if (tl && window.echarts) setupTimeline(tl);
    const logs = document.getElementById("logs");
    if (logs) setupLogs(logs);
    const heat = document.getElementById("heatmap");
    if (heat && window.echarts) setupHeatmap(heat);
  });
})();
