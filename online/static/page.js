// The recommendations explorer: plain DOM over the public API. Data is only ever set with textContent
// (never parsed as HTML), so a title or an error message with markup in it renders as text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { userid: null, eventsAvailable: true };

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function show(id, message) {
  const box = $(id);
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// One call of the API: JSON in, JSON out; an error carries the API's own message, nothing else.
async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let reply;
  try {
    reply = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "the service did not answer (" + path + ")");
  }
  let data = null;
  if ((reply.headers.get("Content-Type") || "").includes("json")) {
    try { data = await reply.json(); } catch (err) { data = null; }
  }
  if (!reply.ok) {
    const error = data && data.error ? data.error : {};
    const message = typeof error.message === "string" ? error.message : "HTTP " + reply.status;
    throw new ApiError(reply.status, error.code || "http_" + reply.status, message);
  }
  return data;
}

function describe(item) {
  const title = item.title || "item " + item.itemid;
  return item.year ? title + " (" + item.year + ")" : title;
}

function renderHistory(body) {
  const list = $("history");
  list.replaceChildren();
  $("history-count").textContent = body.known ? "(" + body.items.length + " latest)" : "(unknown user)";
  if (!body.items.length) list.append(el("li", body.known ? "no items" : "no history yet: rate a few films below"));
  for (const item of body.items) {
    const li = el("li", describe(item), item.liked ? "liked" : "");
    li.title = (item.genres || []).join(", ");
    list.append(li);
  }
}

function num(value, digits) {
  return value !== 0 && Math.abs(value) < 0.001 ? value.toExponential(2) : value.toFixed(digits);
}

function reasonCell(reason) {
  const cell = el("td", null, "why");
  if (!reason) return cell;
  cell.append(el("div", reason.summary));
  const p = reason.score_parts;
  const parts = p.ranker !== undefined
    ? "ranker (p_watch \u00d7 p_like^w, read from the recall evidence) " + num(p.ranker, 4)
    : "watch " + num(p.watch, 3) + " + " + p.prior_weight + "\u00d7prior " + num(p.channel_prior, 3) +
    ", \u00d7 like " + num(p.like, 3) + (p.like_weight === 1 ? "" : "^" + p.like_weight) + " = " + num(p.final, 4);
  cell.append(el("div", parts, "parts"));
  return cell;
}

function renderRecs(body) {
  const rows = $("recs").tBodies[0];
  rows.replaceChildren();
  $("rec-user").textContent = "for user " + body.userid;
  body.item_list.forEach((item, i) => {
    const tr = el("tr");
    tr.dataset.itemid = String(item.itemid);
    tr.append(el("td", i + 1, "num"), el("td", describe(item)), el("td", (item.genres || []).join(", ")),
      el("td", num(item.score, 4), "num"));
    const channel = el("td");
    if (item.reason) channel.append(el("span", item.reason.channel, "channel " + item.reason.channel));
    tr.append(channel, reasonCell(item.reason));
    rows.append(tr);
  });
  const info = $("request-info");
  info.replaceChildren();
  const add = (name, value) => info.append(el("dt", name), el("dd", value));
  for (const [role, version] of Object.entries(body.versions || {})) add("version " + role, version || "none");
  add("degraded", (body.degraded || []).length ? body.degraded.join(", ") : "none");
  let total = 0;
  for (const [step, ms] of Object.entries(body.timings_ms || {})) {
    total += ms;
    add(step, ms.toFixed(2) + " ms");
  }
  add("all steps", total.toFixed(2) + " ms");
}

async function loadUser(userid) {
  show("error", "");
  state.userid = userid;
  $("userid").value = String(userid);
  const url = new URL(window.location.href);
  url.searchParams.set("user", String(userid));
  window.history.replaceState(null, "", url);
  const size = Number($("size").value) || 20;
  try {
    const [history, recs] = await Promise.all([
      api("GET", "/ml/users/" + encodeURIComponent(userid) + "/history?size=10"),
      api("POST", "/ml/rec", { userid, size, explain: true }),
    ]);
    renderHistory(history);
    renderRecs(recs);
  } catch (err) {
    show("error", err.message);
  }
}

async function search(query) {
  show("error", "");
  const list = $("search-results");
  list.replaceChildren();
  try {
    const body = await api("GET", "/ml/items?size=10&q=" + encodeURIComponent(query));
    if (!body.items.length) list.append(el("li", "no title matches"));
    for (const item of body.items) {
      const li = el("li", describe(item));
      const like = el("button", "I like it", "rate");
      like.type = "button";
      like.disabled = !state.eventsAvailable;
      like.addEventListener("click", () => rate(item.itemid));
      li.append(like);
      list.append(li);
    }
  } catch (err) {
    show("error", err.message);
  }
}

async function rate(itemid) {
  if (state.userid === null) {
    show("error", "pick or create a user first");
    return;
  }
  try {
    const eventId = "page-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
    await api("POST", "/ml/events", {
      userid: state.userid, itemid, type: "like", timestamp: Math.floor(Date.now() / 1000), event_id: eventId,
    });
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      state.eventsAvailable = false;
      document.querySelectorAll("button.rate").forEach((b) => { b.disabled = true; });
      show("notice", "This server has no POST /ml/events yet: ratings cannot change the list here.");
    } else {
      show("error", err.message);
    }
    return;
  }
  await loadUser(state.userid);
}

function parseUser(text) {
  return /^\s*\d{1,18}\s*$/.test(text) ? Number(text) : null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const userid = parseUser($("userid").value);
    if (userid === null) show("error", "a user id is a whole number, like 1");
    else loadUser(userid);
  });
  $("new-user").addEventListener("click", () => loadUser(2000000000 + Math.floor(Math.random() * 1000000000)));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("search").value);
  });
  const requested = new URLSearchParams(window.location.search).get("user");
  if (requested !== null) {
    const userid = parseUser(requested);
    if (userid === null) show("error", "?user= must be a whole number, like ?user=1");
    else loadUser(userid);
  }
  search("");
});
