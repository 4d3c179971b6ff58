// Hookline's dashboard: a thin client of the /v1 API. The API key stays in this tab's
// sessionStorage and goes only to this server, in the Authorization header. Everything
// the API returns is shown as text (never parsed as HTML). Each view has an address in the
// page's fragment (`#endpoint/ep_…`): ids only, never the key.
"use strict";

const state = { key: sessionStorage.getItem("hookline-key") || "", endpoint: null, delivery: null, view: 0, list: 0, account: null, types: false };
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
    const dd = document.createElement("dd");
    if (v instanceof Node) dd.appendChild(v); else dd.textContent = v == null ? "" : String(v);
    dl.append(dt, dd);
  }
}

// The browser's history follows the views: Back and Forward move between them, and a
// reload opens the same one. A view shown by following the history (or an address that
// names nothing) adds no entry, it only puts its own address in place: else Back onto an
// address that leads elsewhere would push an entry again, and never leave the page.
let following = false;
function remember(hash) {
  if (location.hash === hash) return;
  if (following) history.replaceState(null, "", hash); else history.pushState(null, "", hash);
}

const routes = {
  endpoints: () => endpoints(), events: () => events(), types: () => types(), keys: () => keys(),
  endpoint: (id) => endpoint(id), delivery: (id) => delivery(id), event: (id) => event(id),
};

// Opens the view the fragment names; the endpoints for anything else.
function follow() {
  let name = "", id = "";
  try {
    [name, id = ""] = location.hash.slice(1).split("/").map(decodeURIComponent);
  } catch (_) { name = ""; }
  const needsId = ["endpoint", "delivery", "event"].includes(name);
  // Each view takes its address before its first wait, so the flag covers exactly that.
  following = true;
  try {
    if (!Object.hasOwn(routes, name) || (needsId && !id)) return endpoints();
    return routes[name](id);
  } finally {
    following = false;
  }
}

// Every view change gets a number; an answer for an older view is dropped, so a slow reply
// never paints over what the user moved on to (or steers a button to another endpoint).
function show(tab) {
  state.view += 1;
  // A secret shown leaves the page with its endpoint; a rotation armed is disarmed.
  for (const box of document.querySelectorAll(".secret")) { box.hidden = true; box.textContent = ""; }
  $("#show-secret").textContent = "Show secret";
  disarm();
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  say("");
}

// Empties a view of an object (title, facts, lists) and hides its actions, so nothing of
// the object shown before stays on screen, or under a button, while the next one loads or
// after it failed to.
function blank(section) {
  $(".title", section).textContent = "";
  $(".facts", section).replaceChildren();
  for (const tbody of section.querySelectorAll("tbody")) tbody.replaceChildren();
  for (const more of section.querySelectorAll(".more")) more.hidden = true;
  for (const a of section.querySelectorAll(".needs-object")) a.hidden = true;
}

function reveal(section) {
  for (const a of section.querySelectorAll(".needs-object")) a.hidden = false;
  // A button left off by a request for the object shown before works for this one.
  for (const b of section.querySelectorAll(".needs-object button, button.needs-object")) b.disabled = false;
}

const NOTHING = "Nothing here yet.";

// A paged list: `load(cursor)` fills `tbody` and shows "More" while there is a next page.
function paged(section, path, render) {
  const tbody = $("tbody", section);
  const more = $(".more", section);
  const view = state.view;
  // Lists get numbers too: a list asked for again (another filter) drops the older answers.
  const list = ++state.list;
  const current = () => view === state.view && list === state.list;
  if ($("#status").textContent === NOTHING) say("");
  tbody.replaceChildren();
  more.hidden = true;
  const load = async (cursor) => {
    // One page at a time: a second click while one loads would add it twice.
    more.onclick = null;
    more.disabled = true;
    try {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api("GET", path + (cursor ? sep + "cursor=" + encodeURIComponent(cursor) : ""));
      if (!current()) return;
      for (const item of page.data) tbody.appendChild(render(item));
      more.hidden = !page.next_cursor;
      more.disabled = false;
      more.onclick = () => load(page.next_cursor);
      // (A plan's note says why a list is empty, in place of this.)
      const note = $(".plan-note", section);
      if (!page.data.length && !cursor && !(note && !note.hidden)) say(NOTHING);
    } catch (e) {
      if (!current()) return;
      say(e.message, true);
      more.disabled = false;
      more.onclick = () => load(cursor);
    }
  };
  return load(null);
}

function endpoints() {
  show("endpoints");
  remember("#endpoints");
  const plan = $("#endpoints .plan-note");
  plan.hidden = !state.account || state.account.webhooks;
  if (!plan.hidden) {
    plan.textContent = "This account's plan (" + state.account.plan + ") has no webhooks: its events are kept for the pull API (the Events tab). Endpoints need the Pro or Business plan.";
  }
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
  // Another endpoint starts with every delivery listed, whatever the filter was.
  if (id && id !== state.endpoint) $("#dlv-status").value = "";
  state.endpoint = id || state.endpoint;
  show("endpoint");
  remember("#endpoint/" + encodeURIComponent(state.endpoint));
  const section = $("#endpoint");
  const view = state.view;
  blank(section);
  try {
    const ep = await api("GET", "/v1/endpoints/" + encodeURIComponent(state.endpoint));
    if (view !== state.view) return;
    $(".title", section).textContent = ep.url;
    facts($(".facts", section), [
      ["Id", ep.id], ["Types", ep.event_types.join(", ")], ["Description", ep.description],
      ["State", ep.enabled ? "enabled" : "disabled" + (ep.disabled_reason ? ": " + ep.disabled_reason : "")],
      ["Deliveries", !ep.enabled ? "none while it is disabled"
        : ep.held_back_until
          ? "held back (it kept failing, or asked to wait): next try " + ep.held_back_until
          : "going as usual"],
      ["Rate limit", ep.rate_limit_per_sec ? ep.rate_limit_per_sec + "/s" : "none"],
      // Header values may be credentials of the receiver's: their names only.
      ["Headers", Object.keys(ep.headers || {}).length
        ? Object.keys(ep.headers).join(", ") + " (values not shown)" : "none"],
      ["Previous secret signs until", ep.previous_secret_expires_at || "—"],
      ["Created", ep.created_at], ["Changed", ep.updated_at],
    ]);
    reveal(section);
  } catch (e) {
    if (view === state.view) say(e.message, true);
    return;
  }
  return deliveries();
}

function deliveries() {
  const status = $("#dlv-status").value;
  const path = "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/deliveries" + (status ? "?status=" + status : "");
  return paged($("#endpoint"), path, (d) => {
    const tr = document.createElement("tr");
    cell(tr, link(d.id, () => delivery(d.id)));
    cell(tr, d.created_at);
    cell(tr, link(d.event_id, () => event(d.event_id)));
    cell(tr, d.event_type);
    cell(tr, d.status);
    cell(tr, d.attempt_count);
    cell(tr, d.last_status_code || d.last_error || "");
    return tr;
  });
}

async function delivery(id, message) {
  state.delivery = id || state.delivery;
  show("delivery");
  remember("#delivery/" + encodeURIComponent(state.delivery));
  const section = $("#delivery");
  const view = state.view;
  blank(section);
  try {
    const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(state.delivery));
    if (view !== state.view) return;
    $(".title", section).textContent = d.id;
    // "← Endpoint" leads to this delivery's endpoint, however the user came here.
    if (d.endpoint_id !== state.endpoint) {
      $("#dlv-status").value = "";
      state.endpoint = d.endpoint_id;
    }
    facts($(".facts", section), [
      ["Event", link(d.event_id, () => event(d.event_id))],
      ["Endpoint", link(d.endpoint_id, () => endpoint(d.endpoint_id))],
      ["Type", d.event_type], ["Status", d.status],
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
    reveal(section);
    if (message) say(message);
  } catch (e) {
    if (view === state.view) say(e.message, true);
  }
}

// A time typed in a datetime-local field, read as UTC (every time on screen is UTC): a
// Date, null for an empty field, undefined for one that cannot be read.
function utcField(value) {
  if (!value) return null;
  const at = new Date(value + (value.length === 16 ? ":00Z" : "Z"));
  return Number.isNaN(at.getTime()) ? undefined : at;
}

// The type filter's choices, the account's catalogue, read once.
async function fillTypes() {
  if (state.types) return;
  state.types = true;
  try {
    const page = await api("GET", "/v1/event-types?limit=1000");
    const select = $("#ev-filter select");
    for (const t of page.data) {
      const o = document.createElement("option");
      o.value = t.name; o.textContent = t.name;
      select.appendChild(o);
    }
  } catch (_) {
    state.types = false;
  }
}

// The pull API, oldest first, narrowed by type and by a time to start from ("Last hour"
// gets to the newest quickly).
function events() {
  show("events");
  remember("#events");
  fillTypes();
  const form = $("#ev-filter");
  const query = new URLSearchParams();
  if (form.elements.type.value) query.set("type", form.elements.type.value);
  const since = utcField(form.elements.since.value);
  if (since === undefined) { say("That time cannot be read.", true); return; }
  if (since) query.set("since", since.toISOString());
  const path = "/v1/events" + (query.toString() ? "?" + query.toString() : "");
  return paged($("#events"), path, (ev) => {
    const tr = document.createElement("tr");
    cell(tr, link(ev.id, () => event(ev.id))); cell(tr, ev.type); cell(tr, ev.created_at);
    const pre = document.createElement("pre"); pre.textContent = JSON.stringify(ev.data);
    cell(tr, pre);
    return tr;
  });
}

// One event: what it carried, and its delivery to each endpoint.
async function event(id) {
  show("event");
  remember("#event/" + encodeURIComponent(id));
  const section = $("#event");
  const view = state.view;
  blank(section);
  try {
    const ev = await api("GET", "/v1/events/" + encodeURIComponent(id));
    if (view !== state.view) return;
    $(".title", section).textContent = ev.id;
    facts($(".facts", section), [
      ["Type", ev.type], ["Created", ev.created_at], ["Data", JSON.stringify(ev.data)],
    ]);
  } catch (e) {
    if (view === state.view) say(e.message, true);
    return;
  }
  return paged(section, "/v1/events/" + encodeURIComponent(id) + "/deliveries", (d) => {
    const tr = document.createElement("tr");
    cell(tr, link(d.id, () => delivery(d.id)));
    cell(tr, d.created_at);
    cell(tr, link(d.endpoint_id, () => endpoint(d.endpoint_id)));
    cell(tr, d.status);
    cell(tr, d.attempt_count);
    cell(tr, d.last_status_code || d.last_error || "");
    return tr;
  });
}

function types() {
  show("types");
  remember("#types");
  return paged($("#types"), "/v1/event-types", (t) => {
    const tr = document.createElement("tr");
    cell(tr, t.name); cell(tr, t.description);
    return tr;
  });
}

function keys() {
  show("keys");
  remember("#keys");
  return paged($("#keys"), "/v1/api-keys", (k) => {
    const tr = document.createElement("tr");
    cell(tr, k.id); cell(tr, k.prefix + "…"); cell(tr, k.created_at); cell(tr, k.revoked_at || "—");
    return tr;
  });
}

// "← Endpoint" before any endpoint was opened (a delivery that failed to load) lists them.
const tabs = { endpoints, endpoint: () => (state.endpoint ? endpoint() : endpoints()), events, types, keys };

// Rotation takes two clicks: the first arms the button for a few seconds.
let armed = null;
function disarm() {
  clearTimeout(armed);
  armed = null;
  const b = $("#rotate");
  b.textContent = "Rotate secret";
  b.classList.remove("armed");
}

async function open() {
  try {
    state.account = await api("GET", "/v1/account");
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
  follow();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#key").value.trim();
    open();
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem("hookline-key");
    // Without the address: the next key is another account's, where it names nothing.
    location.replace(location.pathname);
  });
  for (const b of document.querySelectorAll("#tabs button, .back")) {
    b.addEventListener("click", () => tabs[b.dataset.tab]());
  }
  $("#dlv-status").addEventListener("change", deliveries);
  $("#ev-filter").addEventListener("submit", (e) => { e.preventDefault(); events(); });
  $("#ev-last-hour").addEventListener("click", () => {
    // datetime-local takes "YYYY-MM-DDTHH:MM:SS", here in UTC.
    $("#ev-filter").elements.since.value = new Date(Date.now() - 3600e3).toISOString().slice(0, 19);
    events();
  });
  window.addEventListener("popstate", () => { if (!$("#tabs").hidden) follow(); });
  $("#show-secret").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    const box = $("#endpoint .secret");
    if (!box.hidden) { box.hidden = true; box.textContent = ""; button.textContent = "Show secret"; return; }
    const view = state.view;
    button.disabled = true;
    try {
      const r = await api("GET", "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/secret");
      if (view !== state.view) return;
      box.textContent = "Signing secret: " + r.secret;
      box.hidden = false;
      button.textContent = "Hide secret";
    } catch (err) {
      if (view === state.view) say(err.message, true);
    } finally {
      if (view === state.view) button.disabled = false;
    }
  });
  $("#rotate").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    if (!armed) {
      button.textContent = "Click again to rotate";
      button.classList.add("armed");
      armed = setTimeout(disarm, 5000);
      return;
    }
    disarm();
    const view = state.view;
    const id = state.endpoint;
    button.disabled = true;
    try {
      const r = await api("POST", "/v1/endpoints/" + encodeURIComponent(id) + "/secret/rotate");
      if (view !== state.view) return;
      // The endpoint again (its view takes its number at once), with the new secret shown
      // below its facts, unless the user has moved on meanwhile.
      const reloaded = endpoint(id);
      const next = state.view;
      await reloaded;
      if (next !== state.view) return;
      const box = $("#endpoint .secret");
      box.textContent = "New signing secret: " + r.secret + " (the previous one signs beside it until " + r.previous_secret_expires_at + ")";
      box.hidden = false;
      $("#show-secret").textContent = "Hide secret";
      say("Secret rotated.");
    } catch (err) {
      if (view === state.view) say(err.message, true);
    } finally {
      if (view === state.view) button.disabled = false;
    }
  });
  // An action's answer is shown only if the user is still where they asked it; each button
  // is off while its request is out (no second ping or retry by a double click).
  $("#ping").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    const view = state.view;
    button.disabled = true;
    say("Sending a test ping…");
    try {
      const r = await api("POST", "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/test");
      if (view === state.view) {
        say(r.delivered ? "Delivered: " + r.status_code + " in " + r.duration_ms + " ms"
          : "Not delivered: " + (r.status_code || r.error), !r.delivered);
      }
    } catch (err) {
      if (view === state.view) say(err.message, true);
    } finally {
      // Elsewhere by now, the button serves another object: its own request decides.
      if (view === state.view) button.disabled = false;
    }
  });
  $("#recover").addEventListener("submit", async (e) => {
    e.preventDefault();
    // Every time on screen is UTC, as the API gives it: the field is read as UTC too.
    const at = utcField(e.target.elements.since.value);
    if (!at) { say("That time cannot be read.", true); return; }
    const view = state.view;
    const button = $("button[type=submit]", e.target);
    button.disabled = true;
    try {
      const r = await api("POST", "/v1/endpoints/" + encodeURIComponent(state.endpoint) + "/recover", { since: at.toISOString() });
      if (view !== state.view) return;
      await deliveries();
      if (view === state.view) say(r.recovered + " deliveries queued again.");
    } catch (err) {
      if (view === state.view) say(err.message, true);
    } finally {
      if (view === state.view) button.disabled = false;
    }
  });
  $("#retry").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    const view = state.view;
    const id = state.delivery;
    button.disabled = true;
    try {
      await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/retry");
      if (view !== state.view) return;
      say("Retrying now.");
      // Shown again with the new attempt, unless the user has moved on meanwhile.
      setTimeout(() => {
        if (view === state.view) delivery(id, "Retried: its newest attempt is below.");
      }, 1000);
    } catch (err) {
      if (view === state.view) say(err.message, true);
    } finally {
      if (view === state.view) button.disabled = false;
    }
  });
  if (state.key) {
    $("#key").value = state.key;
    open();
  } else {
    say("Enter an API key to open the dashboard.");
  }
});
