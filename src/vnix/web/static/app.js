// vnix dashboard: graphs (uPlot), the serial console (xterm.js) and the VM form's snapshot
// choice. htmx does the rest.
"use strict";

const GRAPH_REFRESH_MS = 5000;

function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return `${proto}://${location.host}${path}`;
}

// -- graphs -----------------------------------------------------------------------------------
function setupGraphs(section) {
  const kind = section.dataset.kind, name = section.dataset.name;
  const select = section.querySelector("select.window");
  const plots = new Map();

  async function refresh(figure) {
    const metric = figure.dataset.metric;
    const url = `/ui/graph/${kind}/${encodeURIComponent(name)}/${encodeURIComponent(metric)}` +
      `?window=${select.value}`;
    let data;
    try {
      const r = await fetch(url, {credentials: "same-origin"});
      if (!r.ok) return;
      data = await r.json();
    } catch (e) { return; }
    figure.querySelector(".points").dataset.points = data.x.length;
    figure.querySelector(".points").textContent = data.x.length ? `(${data.x.length} points)` : "(no data yet)";
    const box = figure.querySelector(".plot");
    const width = Math.max(240, box.clientWidth || 360);
    let plot = plots.get(metric);
    if (!plot) {
      plot = new uPlot({
        width, height: 160,
        series: [{}, {label: data.unit || data.title, stroke: "#2b6cb0", fill: "rgba(43,108,176,0.12)",
                      width: 1.5, points: {show: data.x.length < 60}}],
        axes: [{}, {size: 60}],
        legend: {show: false},
        cursor: {drag: {x: false, y: false}},
      }, [data.x, data.y], box);
      plots.set(metric, plot);
    } else {
      plot.setData([data.x, data.y]);
    }
  }

  function refreshAll() { section.querySelectorAll("figure.graph").forEach(refresh); }
  select.addEventListener("change", refreshAll);
  refreshAll();
  setInterval(() => { if (!document.hidden) refreshAll(); }, GRAPH_REFRESH_MS);
}

// -- serial console ---------------------------------------------------------------------------
function setupConsole(button) {
  const box = document.getElementById("console");
  const status = document.getElementById("console-status");
  const writable = box.dataset.writable === "true";
  let term = null, fit = null, ws = null;

  function connect() {
    if (!term) {
      term = new Terminal({convertEol: false, cursorBlink: writable, fontSize: 13, scrollback: 5000,
                           disableStdin: !writable});
      fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      window.addEventListener("resize", () => fit.fit());
      term.onData((d) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(d); });
    }
    ws = new WebSocket(wsUrl(`/api/v1/vms/${encodeURIComponent(box.dataset.vm)}/console/ws`));
    ws.binaryType = "arraybuffer";
    status.textContent = "connecting…";
    ws.onopen = () => { status.textContent = writable ? "connected" : "connected (read-only)";
                        status.dataset.state = "connected"; button.textContent = "reconnect"; term.focus(); };
    ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    ws.onclose = (e) => { status.textContent = `disconnected${e.reason ? ": " + e.reason : ""}`;
                          status.dataset.state = "disconnected"; };
    window.vnixConsole = {term, ws};
  }
  button.addEventListener("click", () => { if (ws) ws.close(); connect(); });
  button.disabled = false;
}

// -- the VM create form: "from snapshot" makes image, memory and vCPUs the snapshot's ---------
const MACHINE_FIELDS = ["image", "memory", "cpus"];

function fromSnapshot(select) {
  const form = select.form, chosen = select.selectedOptions[0];
  const snap = chosen && chosen.value ? chosen : null;
  for (const name of MACHINE_FIELDS) {
    const field = form.elements[name];
    if (!field) continue;
    if (snap) {
      if (!field.disabled) field.dataset.own = field.value;  // the user's, back when unchosen
      field.value = snap.dataset[name] || "";
      field.disabled = true;  // not sent: the snapshot's machine
    } else if (field.disabled) {
      field.disabled = false;
      field.value = field.dataset.own ?? field.value;
    }
  }
}

document.addEventListener("change", (e) => {
  if (e.target.matches("form#create-vm select[name=snapshot]")) fromSnapshot(e.target);
});

document.addEventListener("DOMContentLoaded", () => {
  if (window.uPlot) document.querySelectorAll("section.graphs").forEach(setupGraphs);
  const c = document.getElementById("console-open");
  if (c && window.Terminal) setupConsole(c);
});
