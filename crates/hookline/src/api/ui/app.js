// Hookline's dashboard: a thin client of the /v1 API. The API key stays in this tab's
// sessionStorage and goes only to this server, in the Authorization header. Everything
// the API returns is shown as text (never parsed as HTML).
"use strict";

const state = { key: sessionStorage.getItem("hookline-key") || "", endpoint: null, delivery: null, view: 0 };
const $ = (sel, root = document) => root.querySelector(sel);

function say(text, isError) {
  const s = $("#status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + state.key } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!resp.ok) {
    const msg = json && json.error ? json.error.message : resp.status + " " + resp.statusText;
    throw new Error(msg);
  }
  return json;
}

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value == null ? "" : String(value);
  row.appendChild(td);
  return td;
}

function link(text, onClick) {
  const a = document.createElement("a");
  a.href = "#";
  a.textContent = text;
  a.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
  return a;
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v == null ? "" : String(v);
    dl.append(dt, dd);
  }
}

// Every view change gets a number; an answer for an older view is dropped, so a slow reply
// never paints over what the user moved on to (or steers a button to another endpoint).
function show(tab) {
  state.view += 1;
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  say("");
}

// A paged list: `load(cursor)` fills `tbody` and shows "More" while there is a next page.
function paged(section, path, render) {
  const tbody = $("tbody", section);
  const more = $(".more", section);
  const view = state.view;
  tbody.replaceChildren();
  more.hidden = true;
  const load = async (cursor) => {
    try {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api("GET", path + (cursor ? sep + "cursor=" + encodeURIComponent(cursor) : ""));
      if (view !== state.view) return;
      for (const item of page.data) tbody.appendChild(render(item));
      more.hidden = !page.next_cursor;
      more.onclick = () => load(page.next_cursor);
      if (!page.data.length && !cursor) say("Nothing here yet.");
    } catch (e) { say(e.message, true); }
  };
  return load(null);
}

function endpoints() {
  show("endpoints");
  return paged($("#endpoints"), "/v1/endpoints", (ep) => {
    const tr = document.createElement("tr");
    cell(tr, link(ep.url, () => endpoint(ep.id)));
    cell(tr, ep.event_types.join(", "));
    cell(tr, ep.enabled ? "enabled" : "disabled" + (ep.disabled_reason ? ": " + ep.disabled_reason : ""));
    cell(tr, ep.id);
    return tr;
  });
}

async function endpoint(id) {
  state.endpoint = id || state.endpoint;
  show("endpoint");
  const section = $("#endpoint");
  const view = state.view;
  $(".title", section).textContent = "";
  try {
    const ep = await api("GET", "/v1/endpoints/" + encodeURIComponent(state.endpoint));
    if (view !== state.view) return;
    $(".title", section).textContent = ep.url;
    facts($(".facts", section), [
      ["Id", ep.id], ["Types", ep.event_types.join(", ")], ["Description", ep.description],
      ["State", ep.enabled ? "enabled" : "disabled" + (ep.disabled_reason ? ": " + ep.disabled_reason : "")],
      ["Rate limit", ep.rate_limit_per_sec ? ep.rate_limit_per_sec + "/s" : "none"],
      ["Previous secret signs until", ep.previous_secret_expires_at || "—"],
      ["Created", ep.created_at], ["Changed", ep.updated_at],
    ]);
  } catch (e) { say(e.message, true); return; }
  return deliveries();
}

function deliveries() {
  const status = $("#dlv-status").value;
  const path = "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/deliveries" + (status ? "?status=" + status : "");
  return paged($("#endpoint"), path, (d) => {
    const tr = document.createElement("tr");
    cell(tr, link(d.id, () => delivery(d.id)));
    cell(tr, d.event_id);
    cell(tr, d.event_type);
    cell(tr, d.status);
    cell(tr, d.attempt_count);
    cell(tr, d.last_status_code || d.last_error || "");
    return tr;
  });
}

async function delivery(id) {
  state.delivery = id || state.delivery;
  show("delivery");
  const section = $("#delivery");
  const view = state.view;
  try {
    const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(state.delivery));
    if (view !== state.view) return;
    $(".title", section).textContent = d.id;
    facts($(".facts", section), [
      ["Event", d.event_id], ["Type", d.event_type], ["Status", d.status],
      ["Next attempt", d.next_attempt_at || "—"], ["Created", d.created_at],
    ]);
    const tbody = $("tbody", section);
    tbody.replaceChildren();
    for (const a of d.attempts) {
      const tr = document.createElement("tr");
      cell(tr, a.attempt); cell(tr, a.started_at); cell(tr, a.duration_ms + " ms");
      cell(tr, a.status_code); cell(tr, a.error);
      const pre = document.createElement("pre"); pre.textContent = a.response_body || "";
      cell(tr, pre);
      tbody.appendChild(tr);
    }
  } catch (e) { say(e.message, true); }
}

function events() {
  show("events");
  return paged($("#events"), "/v1/events", (ev) => {
    const tr = document.createElement("tr");
    cell(tr, ev.id); cell(tr, ev.type); cell(tr, ev.created_at);
    const pre = document.createElement("pre"); pre.textContent = JSON.stringify(ev.data);
    cell(tr, pre);
    return tr;
  });
}

function types() {
  show("types");
  return paged($("#types"), "/v1/event-types", (t) => {
    const tr = document.createElement("tr");
    cell(tr, t.name); cell(tr, t.description);
    return tr;
  });
}

function keys() {
  show("keys");
  return paged($("#keys"), "/v1/api-keys", (k) => {
    const tr = document.createElement("tr");
    cell(tr, k.id); cell(tr, k.prefix + "…"); cell(tr, k.created_at); cell(tr, k.revoked_at || "—");
    return tr;
  });
}

const tabs = { endpoints, endpoint: () => endpoint(), events, types, keys };

async function open() {
  try {
    await api("GET", "/v1/endpoints?limit=1");
  } catch (e) {
    sessionStorage.removeItem("hookline-key");
    $("#tabs").hidden = true;
    show("none");
    say("That key was not accepted: " + e.message, true);
    return;
  }
  sessionStorage.setItem("hookline-key", state.key);
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  endpoints();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#key").value.trim();
    open();
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem("hookline-key");
    location.reload();
  });
  for (const b of document.querySelectorAll("#tabs button, .back")) {
    b.addEventListener("click", () => tabs[b.dataset.tab]());
  }
  $("#dlv-status").addEventListener("change", deliveries);
  $("#ping").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/test");
      say(r.delivered ? "Delivered: " + r.status_code + " in " + r.duration_ms + " ms"
        : "Not delivered: " + (r.status_code || r.error), !r.delivered);
    } catch (e) { say(e.message, true); }
  });
  $("#recover").addEventListener("submit", async (e) => {
    e.preventDefault();
    const since = new Date(e.target.elements.since.value).toISOString();
    try {
      const r = await api("POST", "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/recover", { since });
      say(r.recovered + " deliveries queued again.");
      deliveries();
    } catch (err) { say(err.message, true); }
  });
  $("#retry").addEventListener("click", async () => {
    try {
      await api("POST", "/v1/deliveries/" + encodeURIComponent(state.delivery) + "/retry");
      say("Retrying now.");
      setTimeout(() => delivery(), 1000);
    } catch (e) { say(e.message, true); }
  });
  if (state.key) {
    $("#key").value = state.key;
    open();
  }
});
