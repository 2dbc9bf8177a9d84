// The cemesh web console: topology graph, object view, live events, test events, replicas.
//
// Everything comes from the management API, relayed under /console/api/ with the session's
// token (broker/server/console/gate.py). Text from the mesh is only ever put into the page as
// text (textContent), never as markup.
import cytoscape from "./vendor/cytoscape.esm.min.mjs";
import { dump } from "./vendor/js-yaml.min.mjs";

const REFRESH_MS = 2000;
const MAX_EVENTS = 200;
const COLOURS = { True: "#2e7d32", False: "#c62828", Unknown: "#8a8f98" };
const SHAPES = { 0: "ellipse", 1: "round-rectangle", 2: "diamond", 3: "round-rectangle", 4: "rectangle" };

const $ = (id) => document.getElementById(id);
let csrf = "";
let graph = { nodes: [], edges: [] };
let drawn = "";
let selected = null;
let stream = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, className] of cells) tr.append(el("td", text, className));
  return tr;
}

async function api(path, init = {}) {
  const response = await fetch("/console/api" + path, { credentials: "same-origin", ...init });
  if (response.status === 401) {
    window.location.assign("/console/login");
    throw new Error("the session ended");
  }
  return response;
}

async function problem(response) {
  const text = await response.text();
  try { return JSON.parse(text).message || text; } catch { return text; }
}

function namespace() { return $("namespace").value.trim() || "default"; }

// -- topology --------------------------------------------------------------------------------

const cy = cytoscape({
  container: $("graph"),
  style: [
    { selector: "node", style: {
      label: "data(label)", "text-wrap": "wrap", "text-valign": "bottom", "text-margin-y": 4,
      "font-size": 11, shape: "data(shape)", width: 34, height: 34,
      "background-color": "data(colour)", "border-width": 2, "border-color": "#fff" } },
    { selector: "node.missing", style: { "border-style": "dashed", "border-color": COLOURS.False,
      "background-opacity": 0.25 } },
    { selector: "node:selected", style: { "border-color": "#1565c0", "border-width": 4 } },
    { selector: "edge", style: {
      width: 1.5, "curve-style": "bezier", "target-arrow-shape": "triangle",
      "line-color": "#9aa3ad", "target-arrow-color": "#9aa3ad",
      label: "data(label)", "font-size": 9, color: "#5f6670", "text-rotation": "autorotate" } },
    { selector: "edge.owns", style: { "line-style": "dotted", "target-arrow-shape": "none" } },
    { selector: "edge.deadLetterSink", style: { "line-color": COLOURS.False,
      "target-arrow-color": COLOURS.False, "line-style": "dashed" } },
  ],
});
window.cemesh = { cy }; // for a look from the browser's developer tools (and the tests)

// Rows within each column: a node sits near the mean row of what points at it, which keeps
// most edges short and uncrossed (the barycentre heuristic); ties keep the server's order.
function rowsOf(topology) {
  const rowOf = {};
  const sources = {};
  for (const edge of topology.edges) (sources[edge.target] = sources[edge.target] || []).push(edge.source);
  const tiers = [...new Set(topology.nodes.map((n) => n.tier))].sort((a, b) => a - b);
  for (const tier of tiers) {
    const column = topology.nodes.filter((n) => n.tier === tier).map((node, order) => {
      const known = (sources[node.id] || []).filter((id) => id in rowOf).map((id) => rowOf[id]);
      const centre = known.length ? known.reduce((a, b) => a + b, 0) / known.length : Number.MAX_SAFE_INTEGER;
      return { node, centre, order };
    });
    column.sort((a, b) => (a.centre - b.centre) || (a.order - b.order));
    column.forEach((entry, row) => { rowOf[entry.node.id] = row; });
  }
  return rowOf;
}

function elements(topology) {
  const rowOf = rowsOf(topology);
  const nodes = topology.nodes.map((node) => {
    const index = rowOf[node.id];
    const replicas = node.replicas ? `\n${node.replicas.actual}/${node.replicas.desired} replicas` : "";
    return {
      group: "nodes",
      data: { ...node, id: node.id, label: `${node.kind}\n${node.name}${replicas}`,
              colour: COLOURS[node.ready.status] || COLOURS.Unknown, shape: SHAPES[node.tier] },
      position: { x: node.tier * 220, y: index * 95 },
      classes: node.missing ? "missing" : "",
    };
  });
  const edges = topology.edges.map((edge, i) => ({
    group: "edges", data: { id: `e${i}`, ...edge }, classes: edge.label,
  }));
  return [...nodes, ...edges];
}

function draw(topology) {
  const key = JSON.stringify([topology.nodes, topology.edges]);
  if (key === drawn) return;
  const sameShape = JSON.stringify(topology.nodes.map((n) => n.id)) ===
    JSON.stringify(graph.nodes.map((n) => n.id)) && drawn !== "";
  graph = topology;
  drawn = key;
  if (sameShape) {  // only statuses changed: keep the user's zoom and positions
    for (const item of elements(topology)) if (item.group === "nodes") cy.$id(item.data.id).data(item.data);
  } else {
    cy.elements().remove();
    cy.add(elements(topology));
    cy.layout({ name: "preset", fit: true, padding: 40 }).run();
    if (cy.zoom() > 1.6) { cy.zoom(1.6); cy.center(); } // a small mesh is not drawn huge
  }
  if (selected) cy.$id(selected.id).select();
  listObjects(topology);
  listBrokers(topology);
  listReplicas(topology);
}

function listObjects(topology) {
  const body = $("objects").tBodies[0];
  body.replaceChildren();
  for (const node of topology.nodes) {
    const tr = row([[node.kind], [node.name], [node.ready.status, `ready-${node.ready.status}`],
                    [node.ready.reason]]);
    tr.dataset.id = node.id;
    if (selected && selected.id === node.id) tr.classList.add("selected");
    tr.addEventListener("click", () => select(node.id));
    body.append(tr);
  }
}

function listBrokers(topology) {
  const names = topology.nodes.filter((n) => n.kind === "Broker" && !n.missing).map((n) => n.name);
  for (const select of [$("events-broker"), $("send-broker")]) {
    const current = select.value;
    const options = [...select.options].map((o) => o.value);
    if (JSON.stringify(options) === JSON.stringify(names)) continue;
    select.replaceChildren(...names.map((name) => el("option", name)));
    if (names.includes(current)) select.value = current;
    if (select.id === "events-broker") watch();
  }
}

function listReplicas(topology) {
  const revisions = topology.nodes.filter((n) => n.replicas);
  $("no-replicas").hidden = revisions.length > 0;
  $("replica-table").tBodies[0].replaceChildren(...revisions.map((n) => row([
    [n.name], [n.replicas.desired], [n.replicas.actual],
    [n.ready.status, `ready-${n.ready.status}`]])));
}

async function refresh() {
  try {
    const response = await api(`/apis/cemesh.dev/v1alpha1/namespaces/${encodeURIComponent(namespace())}/topology`);
    if (!response.ok) throw new Error(await problem(response));
    const topology = await response.json();
    draw(topology);
    const hidden = topology.hidden.length ? ` (not allowed to list: ${topology.hidden.join(", ")})` : "";
    $("status").textContent = `${topology.nodes.length} objects${hidden}`;
  } catch (error) {
    $("status").textContent = `topology: ${error.message}`;
  }
}

// -- one object ------------------------------------------------------------------------------

async function select(id) {
  const node = graph.nodes.find((n) => n.id === id);
  if (!node) return;
  selected = node;
  cy.elements().unselect();
  cy.$id(id).select();
  for (const tr of $("objects").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  $("object-title").textContent = `${node.kind} ${node.namespace}/${node.name}`;
  if (node.kind === "Broker" && !node.missing) {
    $("events-broker").value = node.name;
    $("send-broker").value = node.name;
    watch();
  }
  if (!node.path) {
    showObject(node.missing ? `# ${node.kind} ${node.name} is referenced but not stored\n` : `# ${node.name}\n`, []);
    return;
  }
  const response = await api(node.path);
  if (!response.ok) {
    showObject(`# ${await problem(response)}\n`, []);
    return;
  }
  const object = await response.json();
  showObject(dump(object, { noRefs: true, lineWidth: 100 }), (object.status || {}).conditions || []);
}

function showObject(yaml, conditions) {
  $("yaml").textContent = yaml;
  $("conditions").hidden = conditions.length === 0;
  $("conditions").tBodies[0].replaceChildren(...conditions.map((c) => row([
    [c.type], [c.status, `ready-${c.status}`], [c.reason || ""], [c.message || ""]])));
}

cy.on("tap", "node", (event) => select(event.target.id()));

// -- live events (the feed of `cemesh tail`) ---------------------------------------------------

async function watch() {
  const broker = $("events-broker").value;
  if (stream) stream.abort();
  stream = null;
  $("event-list").replaceChildren();
  if (!broker) { $("events-state").textContent = "no Broker to watch"; return; }
  const controller = new AbortController();
  stream = controller;
  const path = `/apis/eventing.knative.dev/v1/namespaces/${encodeURIComponent(namespace())}` +
    `/brokers/${encodeURIComponent(broker)}/events`;
  try {
    const response = await api(path, { signal: controller.signal });
    if (!response.ok) throw new Error(await problem(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) if (line.trim()) show(JSON.parse(line));
    }
    $("events-state").textContent = "stream ended";
  } catch (error) {
    if (!controller.signal.aborted) $("events-state").textContent = `not watching: ${error.message}`;
  }
}

function show(message) {
  const list = $("event-list");
  if (message.watching) { $("events-state").textContent = `watching ${message.watching}`; return; }
  if (message.dropped) { list.prepend(el("li", `${message.dropped} events dropped (too slow)`, "error")); return; }
  const event = message.event;
  if (!event) return;
  const data = event.data === undefined ? (event.data_base64 ? "<binary>" : "") : JSON.stringify(event.data);
  const when = event.time || event.knativearrivaltime || "";
  const item = el("li", `${when} ${event.type} ${event.source} id=${event.id} ${data}`);
  item.dataset.id = event.id;
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// -- test events -----------------------------------------------------------------------------

async function send(submit) {
  submit.preventDefault();
  const form = new FormData(submit.target);
  const output = $("send-result");
  const event = { specversion: "1.0", id: crypto.randomUUID(), type: form.get("type"),
                  source: form.get("source") };
  const text = String(form.get("data") || "").trim();
  if (text) {
    try { event.data = JSON.parse(text); } catch (error) {
      output.className = "error";
      output.textContent = `data is not JSON: ${error.message}`;
      return;
    }
    event.datacontenttype = "application/json";
  }
  const path = `/apis/eventing.knative.dev/v1/namespaces/${encodeURIComponent(namespace())}` +
    `/brokers/${encodeURIComponent(form.get("broker"))}/events`;
  const response = await api(path, { method: "POST", body: JSON.stringify(event),
    headers: { "content-type": "application/json", "x-cemesh-csrf": csrf } });
  output.className = response.ok ? "" : "error";
  output.textContent = response.ok ? `sent ${event.id}` : `${response.status}: ${await problem(response)}`;
}

// -- session ---------------------------------------------------------------------------------

async function start() {
  const response = await fetch("/console/session", { credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/console/login"); return; }
  const session = await response.json();
  csrf = session.csrf;
  $("user").textContent = session.user;
  $("logout").addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", credentials: "same-origin",
                                     headers: { "x-cemesh-csrf": csrf } });
    window.location.assign("/console/login");
  });
  $("send-form").addEventListener("submit", send);
  $("events-broker").addEventListener("change", watch);
  $("namespace").addEventListener("change", () => {
    selected = null; drawn = ""; graph = { nodes: [], edges: [] };
    $("events-broker").replaceChildren(); // so that the next namespace's Brokers are new options
    $("send-broker").replaceChildren();
    watch(); // stops the stream of the previous namespace
    refresh();
  });
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
