// The natsreg dashboard: follows /_natsreg/events (server-sent events) and draws the fleet.
// No framework and no build step: it ships as it is in the Python package.
//
// The stream is read with fetch() rather than EventSource, which cannot send the
// Authorization or API-key header a bridge with auth asks for. Everything shown comes from
// the stream: a "fleet" event (the registry's view and the figures beside it) every two
// seconds, and the registry's change events (up, down, changed, health) as they happen.
"use strict";

// Where the bridge is mounted (an app may serve it under a prefix): what precedes /_natsreg/.
const ROOT = location.pathname.slice(0, location.pathname.indexOf("/_natsreg/ui"));
const EVENTS_URL = ROOT + "/_natsreg/events";
const UI_URL = ROOT + "/_natsreg/ui";
const RETRY_MS = 2000;
const MAX_LOG = 200;
const HEALTH_ORDER = { critical: 0, warning: 1, passing: 2 };

const state = {
  service: serviceFromPath(location.pathname),
  instances: new Map(), // id -> InstanceView
  rates: {},
  fleet: null,
  drawing: false,
};

function serviceFromPath(path) {
  const prefix = UI_URL + "/service/";
  return path.startsWith(prefix) ? decodeURIComponent(path.slice(prefix.length)) : null;
}

// -- DOM helpers: text only, never HTML from the bus ----------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function table(caption, headers, rows) {
  return el(
    "table",
    {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el(
      "tbody",
      {},
      rows.map((cells) =>
        el("tr", {}, cells.map((cell, i) => el("td", { "data-label": headers[i] }, cell))),
      ),
    ),
  );
}

function healthBadge(health, text) {
  return el(
    "span",
    { class: "health", "data-health": health },
    el("span", { class: "dot", "aria-hidden": "true" }),
    text || health,
  );
}

function seconds(s) {
  if (!Number.isFinite(s) || s < 0) return "–";
  if (s < 1) return "just now";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function ago(s) {
  const text = seconds(s);
  return text === "just now" || text === "–" ? text : `${text} ago`;
}

function figure(value, unit) {
  return value === null || value === undefined ? "–" : `${value.toFixed(value < 10 ? 2 : 0)}${unit}`;
}

// -- credentials ----------------------------------------------------------------------------

function authHeaders() {
  const saved = JSON.parse(sessionStorage.getItem("natsreg-auth") || "null");
  if (!saved) return {};
  return saved.header === "authorization"
    ? { authorization: `Bearer ${saved.token}` }
    : { [saved.header]: saved.token };
}

function askForToken(challenge) {
  // WWW-Authenticate says which header: 'Bearer realm=...' or 'ApiKey header="x-api-key"'.
  const match = /header="([^"]+)"/.exec(challenge || "");
  const header = match ? match[1] : "authorization";
  const form = document.getElementById("login");
  form.hidden = false;
  setConnection("Credentials needed", "refused");
  form.onsubmit = (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    sessionStorage.setItem("natsreg-auth", JSON.stringify({ header, token }));
    form.hidden = true;
    follow();
  };
  document.getElementById("token").focus();
}

// -- the event stream -----------------------------------------------------------------------

function setConnection(text, connState) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.dataset.state = connState;
}

async function follow() {
  for (;;) {
    try {
      const response = await fetch(EVENTS_URL, { headers: authHeaders(), cache: "no-store" });
      if (response.status === 401) {
        sessionStorage.removeItem("natsreg-auth");
        askForToken(response.headers.get("www-authenticate"));
        return;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        setConnection(`The bridge refused the event stream: ${body.message || response.status}`, "refused");
      } else {
        setConnection("Live", "live");
        await read(response.body);
      }
    } catch (error) {
      // The bridge went away, or the network: try again.
    }
    setConnection("Not connected to the bridge: retrying…", "lost");
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

async function read(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handle(name, JSON.parse(data));
    }
  }
}

function handle(name, data) {
  if (name === "fleet") {
    state.fleet = data;
    state.rates = data.rates || {};
    state.instances = new Map(data.instances.map((i) => [i.id, i]));
  } else if (["up", "changed", "health", "down"].includes(name)) {
    const view = data.instance;
    const held = state.instances.get(view.id);
    if (held && held.seq > view.seq) return;
    if (name === "down") state.instances.delete(view.id);
    else state.instances.set(view.id, view);
    logEvent(name, data);
  } else {
    return;
  }
  // One redraw per frame, however many events a burst brings (and none while the tab is hidden).
  if (!state.drawing) {
    state.drawing = true;
    requestAnimationFrame(() => {
      state.drawing = false;
      render();
    });
  }
}

// -- drawing --------------------------------------------------------------------------------

function render() {
  renderBanners();
  const view = document.getElementById("view");
  const focused = document.activeElement;
  if (state.service === null) view.replaceChildren(overview());
  else renderService(view);
  if (focused && focused.id && focused !== document.activeElement) {
    const again = document.getElementById(focused.id);
    if (again) again.focus();
  }
}

function renderBanners() {
  const fleet = state.fleet;
  const banners = [];
  if (fleet && fleet.error) {
    banners.push(["error", `The registry does not answer: ${fleet.error}`]);
  }
  if (fleet && (fleet.warming_up || fleet.warming_nodes.length)) {
    const nodes = fleet.warming_nodes.length ? ` (${fleet.warming_nodes.join(", ")})` : "";
    banners.push([
      "warning",
      `A registry node is warming up${nodes}: for a few seconds the view may miss instances.`,
    ]);
  }
  if (fleet && fleet.mass_expiry) {
    const m = fleet.mass_expiry;
    banners.push([
      "error",
      `Mass expiry: ${m.lost} of ${m.before} instances went silent within ${seconds(m.since_s)}` +
        " — a crash wave, or a network cut between them and the registry.",
    ]);
  }
  // Redrawn only when they change: an alert is read out each time it is put in the page.
  const node = document.getElementById("banners");
  const signature = JSON.stringify(banners);
  if (node.dataset.signature === signature) return;
  node.dataset.signature = signature;
  node.replaceChildren(
    ...banners.map(([level, text]) => el("p", { class: "banner", "data-level": level, role: "alert" }, text)),
  );
}

function byService() {
  const services = new Map();
  for (const i of state.instances.values()) {
    if (!services.has(i.name)) services.set(i.name, []);
    services.get(i.name).push(i);
  }
  return new Map([...services.entries()].sort(([a], [b]) => a.localeCompare(b)));
}

function worstHealth(instances) {
  const counts = {};
  for (const i of instances) counts[i.health] = (counts[i.health] || 0) + 1;
  const worst = Object.keys(counts).sort((a, b) => HEALTH_ORDER[a] - HEALTH_ORDER[b])[0];
  const text = Object.entries(counts)
    .sort(([a], [b]) => HEALTH_ORDER[a] - HEALTH_ORDER[b])
    .map(([health, n]) => `${n} ${health}`)
    .join(", ");
  return healthBadge(worst || "critical", text || "no instance");
}

function overview() {
  document.title = "Services · natsreg";
  document.getElementById("title").textContent = "Services";
  const services = byService();
  if (!state.fleet) return el("p", {}, "Waiting for the registry's view…");
  if (!services.size) {
    return el("p", {}, state.fleet.error ? "No view of the registry (see above)." : "The registry lists no service.");
  }
  const rows = [...services.entries()].map(([name, instances]) => {
    const versions = [...new Set(instances.map((i) => i.version))].sort();
    const kinds = [...new Set(instances.map((i) => i.kind))].join(", ");
    const rates = state.rates[name] || {};
    return [
      // An id, so that the link keeps the keyboard's focus when the table is redrawn.
      el("a", { href: `${UI_URL}/service/${encodeURIComponent(name)}`, id: `service-${name}` }, name),
      versions.join(", "),
      kinds,
      String(instances.length),
      worstHealth(instances),
      figure(rates.requests_per_s, "/s"),
      figure(rates.errors_per_s, "/s"),
      figure(rates.latency_ms, " ms"),
    ];
  });
  return table(
    "Every service the registry lists, with the figures of the last seconds",
    ["Service", "Versions", "Kind", "Instances", "Health", "Requests", "Errors", "Latency"],
    rows,
  );
}

function renderService(view) {
  const name = state.service;
  document.title = `${name} · natsreg`;
  document.getElementById("title").textContent = name;
  const instances = [...state.instances.values()]
    .filter((i) => i.name === name)
    .sort((a, b) => a.version.localeCompare(b.version) || a.id.localeCompare(b.id));
  let live = document.getElementById("live");
  if (!live) {
    live = el("div", { id: "live" });
    view.replaceChildren(live, el("h2", {}, "Endpoints"), el("div", { id: "endpoints" }), requestForm());
  }
  const rates = state.rates[name] || {};
  live.replaceChildren(
    el(
      "p",
      { class: "summary" },
      `${instances.length} instance${instances.length === 1 ? "" : "s"} · `,
      `${figure(rates.requests_per_s, "")} requests/s · ${figure(rates.errors_per_s, "")} errors/s · `,
      `latency ${figure(rates.latency_ms, " ms")}`,
    ),
    el("h2", {}, "Instances"),
    instances.length ? instanceTable(instances) : el("p", {}, "No instance of this service is running."),
    el("h2", {}, "Events"),
    eventTable(instances),
  );
  // Redrawn only when they change, so that an opened schema stays open.
  const list = endpoints(instances);
  const holder = document.getElementById("endpoints");
  const signature = JSON.stringify(list);
  if (holder.dataset.signature !== signature) {
    holder.dataset.signature = signature;
    holder.replaceChildren(endpointTable(list));
  }
  updateEndpointChoices(list);
}

function instanceTable(instances) {
  const now = Date.now();
  return table(
    `The instances of ${state.service}`,
    [
      "Instance", "Version", "Health", "Host", "PID", "NATS server", "Metadata", "Uptime",
      "In flight", "Served", "Errors", "Last heartbeat",
    ],
    instances.map((i) => {
      const started = Date.parse(i.started);
      const server = (i.conn || "").split("/")[0];
      return [
        el("code", {}, i.id),
        i.version,
        healthBadge(i.health),
        i.host || "–",
        i.pid ? String(i.pid) : "–",
        server ? el("code", { title: i.conn }, server.slice(0, 12)) : "–",
        Object.entries(i.metadata || {}).map(([k, v]) => el("span", { class: "meta" }, `${k}=${v}`)),
        Number.isFinite(started) ? seconds((now - started) / 1000) : "–",
        String(i.load.in_flight),
        String(i.load.served),
        String(i.load.errors),
        i.kind === "micro" ? "– (ADR-32)" : ago(i.age_s),
      ];
    }),
  );
}

// The durable events the instances consume (and how) and those they declare they emit.
function eventTable(instances) {
  const rows = new Map();
  for (const i of instances) {
    for (const e of i.events || []) {
      const mode = e.broadcast ? "broadcast" : e.ordered ? "ordered" : "balanced";
      rows.set(`consumes ${e.type}`, [e.type, "consumes", mode]);
    }
    for (const type of i.emits || []) rows.set(`emits ${type}`, [type, "emits", "–"]);
  }
  if (!rows.size) return el("p", {}, "This service neither consumes nor declares events.");
  const sorted = [...rows.values()].sort((a, b) => a[0].localeCompare(b[0]) || a[1].localeCompare(b[1]));
  return table(`The events ${state.service} consumes and emits`, ["Event", "Role", "Mode"], sorted);
}

function endpoints(instances) {
  const found = new Map();
  for (const i of instances) for (const e of i.endpoints) if (!found.has(e.name)) found.set(e.name, e);
  return [...found.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function schemaCell(schemas) {
  if (!schemas) return "–";
  return ["request", "response"]
    .filter((part) => schemas[part])
    .map((part) =>
      el("details", {}, el("summary", {}, part), el("pre", {}, JSON.stringify(schemas[part], null, 2))),
    );
}

function endpointTable(list) {
  if (!list.length) return el("p", {}, "No endpoint is known.");
  return table(
    `The endpoints of ${state.service}`,
    ["Endpoint", "Subject", "Queue group", "Idempotent", "Schemas"],
    list.map((e) => [
      e.name,
      el("code", {}, e.subject),
      e.queue_group || "–",
      e.idempotent ? "yes" : "no",
      schemaCell(e.schemas),
    ]),
  );
}

// -- the request form -----------------------------------------------------------------------

function requestForm() {
  const form = el(
    "form",
    { id: "request", "aria-labelledby": "request-title" },
    el("h2", { id: "request-title" }, "Send a request"),
    el("p", { class: "hint" }, "Sent through this bridge, as any HTTP client would."),
    el("label", { for: "endpoint" }, "Endpoint"),
    el("select", { id: "endpoint", name: "endpoint", required: true }),
    el("label", { for: "payload" }, "Payload (JSON)"),
    el("textarea", { id: "payload", name: "payload", rows: 4, spellcheck: "false" }, "{}"),
    el("button", { type: "submit", id: "send" }, "Send"),
    el("div", { id: "outcome", role: "status", "aria-live": "polite" }),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  return form;
}

function updateEndpointChoices(list) {
  const select = document.getElementById("endpoint");
  const wanted = list.map((e) => e.subject).join("\n");
  if (select.dataset.subjects === wanted) return;
  const chosen = select.value;
  select.replaceChildren(...list.map((e) => el("option", { value: e.subject }, `${e.name} (${e.subject})`)));
  select.dataset.subjects = wanted;
  if (list.some((e) => e.subject === chosen)) select.value = chosen;
}

function showOutcome(ok, title, text) {
  document
    .getElementById("outcome")
    .replaceChildren(el("p", { class: "outcome", "data-ok": ok ? "yes" : "no" }, title), el("pre", {}, text));
}

async function send() {
  const subject = document.getElementById("endpoint").value;
  const payload = document.getElementById("payload").value;
  if (!subject) return showOutcome(false, "No endpoint to send to", "");
  if (payload.trim()) {
    try {
      JSON.parse(payload);
    } catch (error) {
      return showOutcome(false, "The payload is not valid JSON", String(error.message));
    }
  }
  // The bridge's default route: /<service>/<endpoint> is the subject <service>.<endpoint>.
  const path = ROOT + "/" + subject.split(".").map(encodeURIComponent).join("/");
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: payload,
    });
    const text = await response.text();
    let shown = text;
    try {
      shown = JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) {
      // Not JSON: shown as it came.
    }
    showOutcome(response.ok, response.ok ? `Reply (${response.status})` : `Error ${response.status}`, shown);
  } catch (error) {
    showOutcome(false, "The request did not reach the bridge", String(error.message));
  }
}

// -- the event log --------------------------------------------------------------------------

function logEvent(kind, event) {
  const i = event.instance;
  if (state.service !== null && i.name !== state.service) return;
  const detail = kind === "health" ? i.health : event.reason;
  const item = el(
    "li",
    { "data-kind": kind },
    el("time", { datetime: new Date().toISOString() }, new Date().toLocaleTimeString()),
    " ",
    el("strong", {}, kind),
    ` ${i.name}@${i.version} `,
    el("code", {}, i.id),
    detail ? ` (${detail})` : "",
  );
  const log = document.getElementById("log");
  log.prepend(item);
  while (log.children.length > MAX_LOG) log.lastElementChild.remove();
}

render();
follow();
