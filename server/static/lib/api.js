// What every page shares: the server's settings, the JSON API with the login token, a DOM
// helper, the page header (navigation and the language switch) and formatting.
import { money as formatMoney } from "./money.js";
import { storage } from "./storage.js";
import { LANGUAGES, currentLanguage, setLanguage, t } from "./i18n.js";

export const settings = JSON.parse(document.body.dataset.settings || "{}");

export function token() { return storage.getItem("shopcast.token"); }
export function account() {
  try { return JSON.parse(storage.getItem("shopcast.account") || "null"); } catch { return null; }
}
export function saveSession(session) {
  storage.setItem("shopcast.token", session.access_token);
  storage.setItem("shopcast.account", JSON.stringify(session.account));
}
export function clearSession() {
  storage.removeItem("shopcast.token");
  storage.removeItem("shopcast.account");
}

/** An API error: the HTTP status and the server's JSON error (code, message, field). */
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || body || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.field = err.field;
  }
}

/** Call the JSON API; returns the parsed body (null for 204) or throws ApiError. */
export async function api(method, path, body, headers = {}) {
  const h = { accept: "application/json", ...headers };
  const tok = token();
  if (tok) h.authorization = `Bearer ${tok}`;
  if (body !== undefined) h["content-type"] = "application/json";
  const response = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed = null;
  if (text) { try { parsed = JSON.parse(text); } catch { parsed = { message: text }; } }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

/** The same, but null when the route is absent (404 from a branch not merged yet). */
export async function apiOptional(method, path, body, headers) {
  try { return await api(method, path, body, headers); } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

/** Save ``blob`` as a file called ``filename`` (the browser's download). */
export function saveBlob(blob, filename) {
  const link = el("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

/** GET ``path`` with each Bearer token of ``bearers`` in turn (a string, or a function giving
 * one, asked only when the ones before were refused with 403) and save the answer as
 * ``filename``: a plain link cannot send a token. Returns the Blob; throws ApiError. */
export async function downloadFile(path, filename, bearers) {
  let response = null;
  for (const source of bearers) {
    const bearer = typeof source === "function" ? await source() : source;
    if (!bearer) continue;
    response = await fetch(path, { headers: { authorization: `Bearer ${bearer}` } });
    if (response.status !== 403) break;
  }
  if (!response) response = await fetch(path);
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  const blob = await response.blob();
  saveBlob(blob, filename);
  return blob;
}

/** A random id for this browser, so that statistics count an anonymous viewer once. */
export function viewerId() {
  let id = storage.getItem("shopcast.viewer");
  if (!id) { id = crypto.randomUUID(); storage.setItem("shopcast.viewer", id); }
  return id;
}

/** Record a room event (impression, click, share, arrival); quiet when unsupported. Under the
 * login token, else ``bearer`` (the room's viewer token), else with this browser's id. */
export function roomEvent(roomId, event, { bearer } = {}) {
  const auth = token() || bearer;
  if (!auth) event = { ...event, viewer: viewerId() };
  fetch(`/api/v1/rooms/${encodeURIComponent(roomId)}/events`, {
    method: "POST", headers: { "content-type": "application/json", ...(auth ? { authorization: `Bearer ${auth}` } : {}) },
    body: JSON.stringify(event), keepalive: true,
  }).catch(() => {});
}

/** Make an element: el("a", {href: "/"}, "text", child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

export function money(minor, currency = "USD") {
  return formatMoney(minor, currency, currentLanguage() === "zh" ? "zh-CN" : "en");
}

export function when(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(currentLanguage() === "zh" ? "zh-CN" : "en");
}

/** The page frame: header with navigation and language switch; returns the <main>. */
export function frame(titleKey, { embed = false } = {}) {
  document.documentElement.lang = currentLanguage() === "zh" ? "zh-CN" : "en";
  document.title = `${t(titleKey)} · shopcast`;
  const main = el("main", { id: "main", class: embed ? "embed" : "" });
  if (embed) { document.body.append(main); return main; }
  const me = account();
  const nav = el("nav", { "aria-label": "shopcast" },
    el("a", { href: "/", class: "brand" }, t("brand")),
    el("a", { href: "/upcoming" }, t("upcoming")),
    el("a", { href: "/search" }, t("search")),
    me ? el("a", { href: "/orders" }, t("orders")) : null,
    me ? el("a", { href: "/profile" }, me.display_name || me.name) : el("a", { href: "/login" }, t("login")),
    me ? el("button", { type: "button", onclick: () => { clearSession(); location.reload(); } }, t("logout"))
       : el("a", { href: "/register" }, t("register")),
  );
  const select = el("select", { id: "lang", "aria-label": t("language") },
    ...Object.entries(LANGUAGES).map(([code, label]) => el("option", { value: code, selected: code === currentLanguage() }, label)));
  select.addEventListener("change", () => { setLanguage(select.value); location.reload(); });
  document.body.append(el("header", {}, nav, el("label", { class: "lang" }, t("language"), " ", select)), main);
  return main;
}

/** A room card for the home, upcoming and search lists: an ended room links to its replay. */
export function roomCard(room) {
  const live = room.state === "live";
  const ended = room.state === "ended" || room.state === "replay";
  const href = ended ? `/replay/${encodeURIComponent(room.id)}` : `/live/${encodeURIComponent(room.id)}${live ? "" : "?from=upcoming"}`;
  return el("li", { class: "room-card", dataset: { room: room.id, state: room.state } },
    room.cover_image_url ? el("img", { src: room.cover_image_url, alt: "", loading: "lazy" }) : null,
    el("div", {},
      el("a", { href }, room.title),
      live ? el("span", { class: "badge live" }, t("playing")) : null,
      ended ? el("span", { class: "badge" }, t("replay")) : null,
      el("p", { class: "muted" }, room.host ? room.host.display_name : "", " · ", t("starts"), " ", when(room.scheduled_start)),
      room.description ? el("p", {}, room.description) : null));
}

export function message(node, text, kind = "info") {
  node.replaceChildren(text);
  node.className = `message ${kind}`;
}
