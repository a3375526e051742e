// The host console: /host lists, creates and schedules rooms; /host/{room id} goes live
// from this browser (camera + microphone, WebCodecs, moq-lite) or shows the OBS push
// settings, pins products, starts flash sales, shows live figures and moderates chat.

import { chooseLanguage, t, translate } from "./i18n.js";
import { MoqSession } from "./moq.js";
import { CameraPublisher } from "./capture.js";
import { money as formatMoney } from "../lib/money.js";
import * as msgpack from "../lib/msgpack.js";
import { downloadFile } from "../lib/api.js";

const TOKEN_KEY = "shopcast.token";
// The server's [host_console] section (conf/default.toml) with the paths and bounds of the
// sections the forms repeat (chat path, room duration, flash sale, prices), loaded first.
const settings = await fetch("/host/settings.json").then((r) => {
  if (!r.ok) throw new Error(`/host/settings.json: HTTP ${r.status}`);
  return r.json();
}).catch((error) => {
  document.getElementById("error").textContent = String(error.message || error);
  throw error;
});

const $ = (id) => document.getElementById(id);
let lang = chooseLanguage();

// What tests and the glass-to-glass benchmark read.
const state = { room: null, setup: null, server: null, stream: null, session: null, broadcast: null,
  publisher: null, chat: null, chatTimes: [], figures: {}, pinsAvailable: null, lastError: null,
  orders: [], held: [], moderated: new Map(), coupons: [], audit: null, encoder: null };
window.hostConsole = state;

// --- helpers ---------------------------------------------------------------------------------

function say(key, extra = "") { $("status").textContent = t(lang, key) + (extra ? ` ${extra}` : ""); }

function fail(error) {
  state.lastError = error;
  const field = error && error.field ? ` (${error.field})` : "";
  $("error").textContent = `${t(lang, "error")}: ${error.message || error}${field}`;
}

function clearError() { $("error").textContent = ""; }

async function api(method, path, body, tokenOverride) {
  const headers = { accept: "application/json" };
  const token = tokenOverride || localStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (response.status === 401 && !path.startsWith("/api/v1/auth/")) showLogin();
  return { status: response.status, ok: response.ok, data };
}

/** The room's host token from its setup: some routes want a token minted for the room. */
function roomToken() {
  return state.setup && state.setup.publish && state.setup.publish.token;
}

/** api(), again with the room's host token when the account's token is refused (403). */
async function roomApi(method, path, body) {
  const answer = await api(method, path, body);
  if (answer.status !== 403 || !roomToken()) return answer;
  return api(method, path, body, roomToken());
}

/** The error object of an API answer (field, message), for fail(). */
function apiError(answer) {
  const error = (answer.data && (answer.data.error || answer.data)) || {};
  return { message: error.message || `HTTP ${answer.status}`, field: error.field, code: error.code };
}

function show(view) {
  for (const id of ["login-view", "rooms-view", "room-view"]) $(id).hidden = id !== view;
}

/** The bounds of the forms' number fields, from /host/settings.json (not copied in the HTML). */
function applyBounds() {
  const set = (input, min, max) => { if (min !== undefined) input.min = String(min); if (max !== undefined) input.max = String(max); };
  const create = $("create-form").elements;
  set(create.duration_min, Math.ceil(settings.room_duration_min_s / 60), Math.floor(settings.room_duration_max_s / 60));
  const flash = $("flash-form").elements;
  set(flash.countdown_s, settings.flash_countdown_min_s, settings.flash_countdown_max_s);
  set(flash.duration_s, settings.flash_duration_min_s, settings.flash_duration_max_s);
  flash.countdown_s.value = String(settings.flash_countdown_min_s);
  flash.duration_s.value = String(Math.min(settings.flash_duration_max_s, Math.max(settings.flash_duration_min_s, 300)));
  set(flash.price_minor, 0, settings.price_max_minor);
  set(flash.per_buyer_limit, 1, settings.quantity_max);
  set(flash.stock_cap, 1, settings.stock_max);
  const coupon = $("coupon-form").elements;
  set(coupon.max_uses, 1, settings.coupon_uses_max);
  for (const select of [$("product-form").elements.currency, coupon.currency]) {
    select.replaceChildren(...(settings.currencies || []).map((code) => new Option(code, code)));
  }
}

function listOf(text) { return text.split(",").map((s) => s.trim()).filter(Boolean); }

function money(minor, currency) {
  return formatMoney(minor, currency || "USD", lang === "zh" ? "zh-CN" : "en");
}

// --- log in ----------------------------------------------------------------------------------

function showLogin() {
  localStorage.removeItem(TOKEN_KEY);
  $("logout").hidden = true;
  $("who").textContent = "";
  show("login-view");
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const form = new FormData(event.target);
  const answer = await api("POST", "/api/v1/auth/login", { name: form.get("name"), password: form.get("password") });
  if (!answer.ok) return fail(apiError(answer));
  localStorage.setItem(TOKEN_KEY, answer.data.access_token);
  route();
});

$("logout").addEventListener("click", () => { showLogin(); });

// --- rooms list and creation -----------------------------------------------------------------

async function showRooms(me) {
  show("rooms-view");
  const answer = await api("GET", `/api/v1/rooms/search?host=${encodeURIComponent(me.name)}&state=any&per_page=100`);
  const list = $("rooms");
  list.replaceChildren();
  const rooms = answer.ok ? answer.data.rooms : [];
  if (!rooms.length) {
    const li = document.createElement("li");
    li.textContent = t(lang, "no_rooms");
    list.append(li);
  }
  for (const room of rooms) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = `/host/${room.id}`;
    link.textContent = room.title;
    const live = document.createElement("a");
    live.href = `/live/${encodeURIComponent(room.id)}`;
    live.textContent = t(lang, "link_live");
    live.setAttribute("aria-label", `${t(lang, "link_live")}: ${room.title}`);
    const stats = document.createElement("a");
    stats.href = `/rooms/${encodeURIComponent(room.id)}/stats`;
    stats.textContent = t(lang, "link_stats");
    stats.setAttribute("aria-label", `${t(lang, "link_stats")}: ${room.title}`);
    li.append(link, ` · ${t(lang, `state_${room.state}`)} · ${new Date(room.scheduled_start).toLocaleString()} · `, live, " · ", stats);
    list.append(li);
  }
  const start = $("create-form").elements.scheduled_start;
  if (!start.value) start.value = localInput(new Date(Date.now() + 3600_000));
}

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const form = event.target;
  for (const el of form.elements) el.removeAttribute("aria-invalid");
  const f = form.elements;
  const start = new Date(f.scheduled_start.value);
  const body = {
    title: f.title.value.trim(),
    description: f.description.value,
    scheduled_start: Number.isNaN(start.getTime()) ? f.scheduled_start.value : start.toISOString(),
    duration_s: Math.round(Number(f.duration_min.value) * 60),
    keywords: listOf(f.keywords.value),
    hashtags: listOf(f.hashtags.value),
    orientation: f.orientation.value,
    language: f.language.value.trim(),
    region: f.region.value.trim().toUpperCase(),
    target_regions: listOf(f.target_regions.value.toUpperCase()),
    team: listOf(f.team.value),
    recording: f.recording.checked,
  };
  if (f.cover_image_url.value.trim()) body.cover_image_url = f.cover_image_url.value.trim();
  const answer = await api("POST", "/api/v1/rooms", body);
  if (!answer.ok) {
    const error = apiError(answer);
    const name = error.field && error.field.split(/[[.]/)[0];
    const input = name && (f[name] || (name === "duration_s" && f.duration_min));
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
    return fail(error);
  }
  say("created");
  location.assign(`/host/${answer.data.room.id}`);
});

// --- one room --------------------------------------------------------------------------------

async function showRoom(roomId) {
  show("room-view");
  $("back").hidden = false;
  const [setup, server] = await Promise.all([api("GET", `/api/v1/rooms/${roomId}/setup`), api("GET", "/api/v1/server")]);
  if (!setup.ok) return fail(apiError(setup));
  state.setup = setup.data;
  state.server = server.data;
  renderRoom(setup.data.room);
  renderPush(setup.data.push);
  if (typeof WebTransport === "undefined") { fail({ message: t(lang, "no_webtransport") }); $("start-camera").disabled = true; }
  else if (typeof VideoEncoder === "undefined") { fail({ message: t(lang, "no_webcodecs") }); $("start-camera").disabled = true; }
  await loadProducts(roomId);
  poll(roomId);
}

function renderRoom(room) {
  state.room = room;
  $("room-title").textContent = room.title;
  $("room-state").textContent = t(lang, `state_${room.state}`);
  $("room-state").dataset.state = room.state;
  $("room-start").dateTime = room.scheduled_start;
  $("room-start").textContent = new Date(room.scheduled_start).toLocaleString();
  const open = room.state === "scheduled" || room.state === "rehearsal";
  // "Go live now" brings the start forward; it applies to an OBS push too (rehearsal).
  $("go-live").disabled = !(room.state === "rehearsal" || (room.state === "scheduled" && state.broadcast));
  if (!open && room.state !== "live") {
    for (const id of ["start-camera", "publish", "go-live"]) $(id).disabled = true;
  }
  renderLinks(room);
  // The product list and coupons are prepared before the room starts (commerce plugin).
  const editable = open;
  $("list-locked").hidden = editable;
  for (const id of ["product-form", "add-product-form", "coupon-form"]) {
    for (const el of $(id).elements) el.disabled = !editable;
  }
}

// --- links and downloads ---------------------------------------------------------------------

function renderLinks(room) {
  const id = encodeURIComponent(room.id);
  $("link-live").href = `/live/${id}`;
  $("link-stats").href = `/rooms/${id}/stats`;
  $("link-replay").href = `/replay/${id}`;
  $("link-replay-item").hidden = room.state !== "ended";
}

/** Save what ``path`` answers as ``filename``: the account's token, then, for a route that
 * wants a token minted for this room, the room's host token from its setup. */
async function download(path, filename) {
  clearError();
  say("downloading");
  try {
    const blob = await downloadFile(path, filename, [localStorage.getItem(TOKEN_KEY), roomToken]);
    state.lastDownload = { path, filename, size: blob.size, type: blob.type };
    say("downloaded");
  } catch (error) {
    fail({ message: error.message, field: error.field });
  }
}

$("download-mp4").addEventListener("click", () =>
  download(`/api/v1/rooms/${state.room.id}/recording.mp4`, `${state.room.id}.mp4`));
$("download-chat-csv").addEventListener("click", () =>
  download(`/api/v1/rooms/${state.room.id}/chat?format=csv`, `chat-${state.room.id}.csv`));
$("download-chat-json").addEventListener("click", () =>
  download(`/api/v1/rooms/${state.room.id}/chat?format=json`, `chat-${state.room.id}.json`));

// --- products: create, add to the room's list, remove ----------------------------------------

function addSkuRow() {
  const row = $("sku-row").content.firstElementChild.cloneNode(true);
  translate(row, lang);
  row.querySelector(".remove-sku").addEventListener("click", () => {
    if ($("skus").querySelectorAll(".sku").length > 1) row.remove();
  });
  const price = row.querySelector("[name=sku_price]");
  price.max = String(settings.price_max_minor);
  row.querySelector("[name=sku_stock]").max = String(settings.stock_max);
  $("skus").append(row);
  return row;
}
$("add-sku").addEventListener("click", () => addSkuRow().querySelector("input").focus());

/** Mark the input a refusal names (fields like "skus[0].price") and focus it. */
function markField(form, field) {
  if (!field) return;
  const match = field.match(/^skus\[(\d+)\]\.(\w+)/);
  let input = null;
  if (match) {
    const row = form.querySelectorAll(".sku")[Number(match[1])];
    input = row && row.querySelector(`[name=sku_${match[2]}]`);
  } else {
    const name = field.split(/[[.]/)[0];
    input = form.elements[name === "images" ? "image_url" : name] || null;
  }
  if (input && input.setAttribute) { input.setAttribute("aria-invalid", "true"); input.focus(); }
}

$("product-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const form = event.target;
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const f = form.elements;
  const currency = f.currency.value;
  const skus = [...form.querySelectorAll(".sku")].map((row) => ({
    name: row.querySelector("[name=sku_name]").value.trim(),
    price: Number(row.querySelector("[name=sku_price]").value),
    currency,
    stock: Number(row.querySelector("[name=sku_stock]").value),
  }));
  const body = { title: f.title.value.trim(), description: f.description.value, category: f.category.value.trim(), skus };
  if (f.brand.value.trim()) body.brand = f.brand.value.trim();
  if (f.image_url.value.trim()) body.images = [f.image_url.value.trim()];
  const created = await api("POST", "/api/v1/products", body);
  if (!created.ok) { const error = apiError(created); markField(form, error.field); return fail(error); }
  const product = created.data;
  const file = f.image_file.files[0];
  if (file) {
    // The commerce plugin's image upload: the raw image with its content type.
    const headers = { "content-type": file.type, authorization: `Bearer ${localStorage.getItem(TOKEN_KEY)}` };
    const upload = await fetch(`/api/v1/products/${product.id}/images`, { method: "POST", headers, body: file });
    if (upload.status === 404 || upload.status === 405) fail({ message: t(lang, "image_upload_unavailable") });
    else if (!upload.ok) {
      let error = {};
      try { error = (await upload.json()).error || {}; } catch { /* not JSON */ }
      fail({ message: error.message || `HTTP ${upload.status}`, field: error.field || "image_file" });
    }
  }
  const added = await api("PUT", `/api/v1/rooms/${state.room.id}/products/${product.id}`, {});
  if (!added.ok) return fail(apiError(added));
  state.lastProduct = product;
  form.reset();
  f.currency.value = currency;
  for (const row of [...form.querySelectorAll(".sku")].slice(1)) row.remove();
  say("product_created", product.id);
  state.productsSignature = null;
  await loadProducts(state.room.id);
});

$("add-product-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const id = event.target.elements.product_id.value.trim();
  const added = await api("PUT", `/api/v1/rooms/${state.room.id}/products/${encodeURIComponent(id)}`, {});
  if (!added.ok) return fail(apiError(added));
  event.target.reset();
  state.productsSignature = null;
  await loadProducts(state.room.id);
});

// --- coupons ---------------------------------------------------------------------------------

$("coupon-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  for (const el of event.target.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const f = event.target.elements;
  const body = { code: f.code.value.trim(), kind: f.kind.value, value: Number(f.value.value), max_uses: Number(f.max_uses.value) };
  if (body.kind === "amount") body.currency = f.currency.value;
  const answer = await api("POST", `/api/v1/rooms/${state.room.id}/coupons`, body);
  if (!answer.ok) { const error = apiError(answer); markField(event.target, error.field); return fail(error); }
  state.coupons.push(answer.data);
  $("coupon-codes").append(new Option(answer.data.code, answer.data.code));
  $("coupon-code").value = answer.data.code;
  event.target.reset();
  say("coupon_created", answer.data.code);
});

$("coupon-pin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target.elements;
  pin({ kind: "coupon", product_id: f.product_id.value, coupon_code: f.coupon_code.value.trim() });
});

// --- orders ----------------------------------------------------------------------------------

function renderOrders(orders) {
  const signature = JSON.stringify(orders.map((o) => [o.id, o.status, o.total]));
  if (signature === state.ordersSignature) return;
  state.ordersSignature = signature;
  state.orders = orders;
  const list = $("orders");
  list.replaceChildren();
  if (!orders.length) {
    const li = document.createElement("li");
    li.textContent = t(lang, "no_orders");
    list.append(li);
  }
  for (const order of orders) {
    const li = document.createElement("li");
    li.dataset.order = order.id;
    li.dataset.status = order.status;
    const status = t(lang, `order_status_${order.status}`);
    li.append(`${order.id} · ${order.quantity} × ${money(order.unit_price, order.currency)} = ${money(order.total, order.currency)} · ${status} `);
    if (order.status === "paid") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t(lang, "confirm_order");
      button.setAttribute("aria-label", `${t(lang, "confirm_order")}: ${order.id}`);
      button.addEventListener("click", async () => {
        clearError();
        button.disabled = true;
        const answer = await api("POST", `/api/v1/orders/${order.id}/confirm`, {});
        if (!answer.ok) { button.disabled = false; return fail(apiError(answer)); }
        await refresh(state.room.id);
      });
      li.append(button);
    }
    list.append(li);
  }
}

/** The encoder's figures under the preview: what was sent, and the rate over the last poll. */
function renderPublishStats() {
  const publisher = state.publisher;
  if (!publisher) { $("publish-stats").textContent = ""; return; }
  const stats = publisher.stats;
  const now = performance.now();
  const last = state.encoder;
  let fps = "–", kbps = "–";
  if (last && now > last.at) {
    const seconds = (now - last.at) / 1000;
    fps = ((stats.videoFrames - last.frames) / seconds).toFixed(1);
    kbps = Math.round(((stats.bytes - last.bytes) * 8) / seconds / 1000);
  }
  state.encoder = { at: now, frames: stats.videoFrames, bytes: stats.bytes, fps, kbps };
  const bytes = stats.bytes >= 1e6 ? `${(stats.bytes / 1e6).toFixed(1)} MB` : `${Math.round(stats.bytes / 1e3)} kB`;
  $("publish-stats").textContent = t(lang, "publish_stats", {
    frames: stats.videoFrames, keyframes: stats.keyframes, dropped: stats.videoDropped,
    audio: stats.audioFrames, bytes, fps, kbps });
}

function renderPush(push) {
  $("push").hidden = !push;
  $("push-off").hidden = !!push;
  if (!push) return;
  $("server-url").value = push.server_url;
  $("stream-key").value = push.stream_key;
  $("push-url").value = push.push_url;
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    const input = $(button.dataset.copy);
    input.select();
    try { await navigator.clipboard.writeText(input.value); } catch { document.execCommand("copy"); }
    say("copied");
  });
}

$("rotate-key").addEventListener("click", async () => {
  const answer = await api("POST", `/api/v1/rooms/${state.room.id}/stream-key`, {});
  if (!answer.ok) return fail(apiError(answer));
  renderPush(answer.data.push);
});

$("start-camera").addEventListener("click", async () => {
  clearError();
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: settings.capture_width_px }, height: { ideal: settings.capture_height_px },
               frameRate: { ideal: settings.capture_framerate_fps } }, audio: true });
  } catch (error) { return fail(error); }
  $("preview").srcObject = state.stream;
  $("publish").disabled = false;
});

$("publish").addEventListener("click", async () => {
  clearError();
  $("publish").disabled = true;
  try {
    await startPublishing();
  } catch (error) {
    $("publish").disabled = false;
    return fail(error);
  }
});

async function startPublishing() {
  const { publish } = state.setup;
  // The console talks to the server that served it; publish.url names its path.
  const url = new URL(new URL(publish.url).pathname, location.origin).toString();
  state.session = await MoqSession.connect(url, { token: publish.token, certificateSha256: state.server.certificate.sha256 });
  state.broadcast = state.session.publish(publish.broadcast);
  state.publisher = new CameraPublisher(state.broadcast, {
    width: settings.capture_width_px, height: settings.capture_height_px,
    framerate: settings.capture_framerate_fps, videoBitrate: settings.video_bitrate_bps,
    audioBitrate: settings.audio_bitrate_bps, keyframeIntervalUs: settings.keyframe_interval_ms * 1000,
    maxEncodeQueue: settings.max_encode_queue_frames, captureLogFrames: settings.capture_log_frames });
  await state.publisher.start(state.stream);
  state.session.closed.then((info) => {
    if (state.session && state.publisher && !state.publisher.stopped) {
      fail({ message: `session closed: ${info.reason || info.closeCode}` });
      stopPublishing();
    }
  });
  $("publish-state").textContent = t(lang, "publishing");
  $("start-camera").disabled = true;
  $("end-live").disabled = false;
  renderRoom(state.room);
  ensureChat();
}

/** Join the chat once the relay has the broadcast (it subscribes to our catalog then);
 * called again on every refresh, so a refused or dropped chat session comes back. */
function ensureChat() {
  if (!state.publisher || state.publisher.stopped || state.chat || state.chatConnecting) return;
  state.chatConnecting = state.publisher.catalogTrack.subscribed
    .then(() => connectChat())
    .catch((error) => {
      closeChat();
      $("chat-state").textContent = String(error.message || error);
    })
    .finally(() => { state.chatConnecting = null; });
}

function closeChat() {
  if (state.chat) { try { state.chat.transport.close(); } catch { /* closed */ } state.chat = null; }
  if (state.unsubscribeChat) { state.unsubscribeChat(); state.unsubscribeChat = null; }
}

function stopPublishing() {
  if (state.publisher) state.publisher.stop();
  closeChat();
  if (state.session) state.session.close();
  state.session = null;
  state.broadcast = null;
  $("end-live").disabled = true;
  $("go-live").disabled = true;
  $("publish-state").textContent = t(lang, "ended_soon");
}

$("go-live").addEventListener("click", async () => {
  clearError();
  const start = new Date(Date.now() + settings.go_live_lead_ms).toISOString();
  const answer = await api("PATCH", `/api/v1/rooms/${state.room.id}`, { scheduled_start: start });
  if (!answer.ok) return fail(apiError(answer));
  renderRoom(answer.data);
});

$("end-live").addEventListener("click", async () => {
  clearError();
  // The room ends now on the server (viewers' streams finish); then the push stops.
  const answer = await api("POST", `/api/v1/rooms/${state.room.id}/end`);
  stopPublishing();
  if (!answer.ok) return fail(apiError(answer));
  $("publish-state").textContent = t(lang, "ended_now");
  renderRoom(answer.data);
});

// --- figures, pins, room state ---------------------------------------------------------------

async function poll(roomId) {
  for (;;) {
    await refresh(roomId).catch((error) => fail(error));
    await new Promise((resolve) => setTimeout(resolve, settings.poll_interval_ms));
  }
}

async function refresh(roomId) {
  const [room, viewers, sales, pins] = await Promise.all([
    api("GET", `/api/v1/rooms/${roomId}`), api("GET", `/api/v1/rooms/${roomId}/viewers`),
    api("GET", `/api/v1/rooms/${roomId}/sales`), api("GET", `/api/v1/rooms/${roomId}/pins`)]);
  if (room.ok) renderRoom(room.data);
  await loadProducts(roomId);
  ensureChat();
  const figures = state.figures;
  // The console's own session holds the room's host token, which the relay does not count.
  figures.viewers = viewers.ok ? viewers.data.concurrent : null;
  figures.peak = viewers.ok ? viewers.data.peak : null;
  $("fig-viewers").textContent = figures.viewers ?? "–";
  $("fig-peak").textContent = figures.peak ?? "–";
  const now = performance.now();
  state.chatTimes = state.chatTimes.filter((at) => now - at < settings.chat_rate_window_ms);
  figures.chatPerMinute = state.chat ? state.chatTimes.length : null;
  $("fig-chat").textContent = figures.chatPerMinute ?? "–";
  // Sales and pins come with the commerce plugin; until then these answer 404 and stay blank.
  if (sales.ok) {
    Object.assign(figures, { orders: sales.data.orders, paid: sales.data.paid_orders, gmv: sales.data.gmv_minor });
    $("fig-orders").textContent = sales.data.orders;
    $("fig-paid").textContent = sales.data.paid_orders;
    $("fig-gmv").textContent = money(sales.data.gmv_minor, sales.data.currency);
    renderOrders(sales.data.recent || []);
  }
  renderPublishStats();
  await loadAudit(roomId);
  state.pinsAvailable = pins.ok;
  $("pins-unavailable").hidden = pins.ok;
  if (pins.ok) renderPins(pins.data.pins);
}

/** The chat's moderation log (owner, team moderators, operators), when the server has it. */
async function loadAudit(roomId) {
  const answer = await roomApi("GET", `/api/v1/rooms/${roomId}/chat/audit`);
  $("audit-section").hidden = !answer.ok;
  if (!answer.ok) { state.audit = null; return; }
  const entries = answer.data.entries || [];
  state.audit = entries;
  $("audit").replaceChildren(...entries.map((entry) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(entry.t * 1000).toLocaleTimeString()} · ${entry.actor} · ${entry.action} ${entry.target}${entry.detail ? ` (${entry.detail})` : ""}`;
    return li;
  }));
}

async function loadProducts(roomId) {
  const answer = await api("GET", `/api/v1/rooms/${roomId}/products`);
  const products = answer.ok ? answer.data.products : [];
  // Redrawn only when the list changes, so a keyboard user's focus stays where it is.
  const signature = JSON.stringify([state.room && state.room.state, products.map((p) => [p.id, p.title, p.skus])]);
  if (signature === state.productsSignature) return;
  state.productsSignature = signature;
  const list = $("products");
  const select = $("flash-product");
  const couponSelect = $("coupon-product");
  list.replaceChildren();
  select.replaceChildren();
  couponSelect.replaceChildren();
  state.products = products;
  if (!products.length) {
    const li = document.createElement("li");
    li.textContent = t(lang, "no_products");
    list.append(li);
  }
  for (const product of products) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${t(lang, "pin")}: ${product.title}`;
    button.addEventListener("click", () => pin({ kind: "product", product_id: product.id }));
    // The room list gives prices per SKU; a pin's product carries price_minor (CONTRACTS.md).
    const sku = (product.skus || [])[0] || {};
    const stock = (product.skus || []).map((s) => `${s.name}: ${s.stock}`).join(", ");
    li.dataset.product = product.id;
    li.append(`${product.title} · ${money(product.price_minor ?? sku.price, product.currency ?? sku.currency)}${stock ? ` · ${stock}` : ""} `, button);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-product";
    remove.textContent = `${t(lang, "remove_product")}: ${product.title}`;
    remove.hidden = !(state.room && ["scheduled", "rehearsal"].includes(state.room.state));
    remove.addEventListener("click", async () => {
      clearError();
      const answer = await api("DELETE", `/api/v1/rooms/${state.room.id}/products/${product.id}`);
      if (!answer.ok) return fail(apiError(answer));
      state.productsSignature = null;
      await loadProducts(state.room.id);
    });
    li.append(" ", remove);
    list.append(li);
    select.append(new Option(product.title, product.id));
    couponSelect.append(new Option(product.title, product.id));
  }
}

/** The media time of the frame on the host's preview, sent with pins (CONTRACTS.md). */
function previewMediaUs() {
  return state.publisher && state.publisher.latestVideoUs !== null ? state.publisher.latestVideoUs : undefined;
}

async function pin(body) {
  clearError();
  const answer = await api("POST", `/api/v1/rooms/${state.room.id}/pins`, { ...body, media_us: previewMediaUs() });
  if (answer.status === 404 && !(answer.data && answer.data.error && answer.data.error.field)) {
    $("pins-unavailable").hidden = false;
    return;
  }
  if (!answer.ok) return fail(apiError(answer));
  state.lastPin = { status: answer.status, pin: answer.data };
  await refresh(state.room.id);
}

function renderPins(pins) {
  const list = $("pins");
  list.replaceChildren();
  for (const item of pins) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${t(lang, "unpin")}: ${t(lang, `pin_kind_${item.kind}`)}: ${item.product ? item.product.title : item.id}`;
    button.addEventListener("click", async () => {
      const answer = await api("DELETE", `/api/v1/rooms/${state.room.id}/pins/${item.id}`, { media_us: previewMediaUs() });
      if (!answer.ok) return fail(apiError(answer));
      await refresh(state.room.id);
    });
    const sale = item.flash_sale ? ` · ${money(item.flash_sale.price_minor, item.product && item.product.currency)}` : "";
    const coupon = item.coupon ? ` · ${item.coupon.code}` : "";
    li.dataset.pin = item.id;
    li.dataset.kind = item.kind;
    li.append(`${t(lang, `pin_kind_${item.kind}`)}: ${item.product ? item.product.title : ""}${sale}${coupon} `, button);
    list.append(li);
  }
}

$("flash-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target.elements;
  pin({ kind: "flash_sale", product_id: f.product_id.value, flash_sale: {
    price_minor: Number(f.price_minor.value), countdown_s: Number(f.countdown_s.value),
    duration_s: Number(f.duration_s.value), per_buyer_limit: Number(f.per_buyer_limit.value),
    stock_cap: Number(f.stock_cap.value) } });
});

// --- chat: the room's chat track to read, a chat session to moderate -------------------------

async function connectChat() {
  const roomId = state.room.id;
  const { token } = state.setup.publish;
  const url = new URL(settings.chat_path, location.origin);
  url.searchParams.set("room", roomId);
  url.searchParams.set("token", token);
  const hash = state.server.certificate.sha256;
  const value = new Uint8Array(hash.match(/../g).map((h) => parseInt(h, 16)));
  const transport = new WebTransport(url.toString(), { serverCertificateHashes: [{ algorithm: "sha-256", value }] });
  await transport.ready;
  transport.closed.catch(() => {}).finally(() => {
    if (state.chat && state.chat.transport === transport) closeChat();
  });
  const incoming = transport.incomingBidirectionalStreams.getReader();
  const { value: stream } = await incoming.read();
  const writer = stream.writable.getWriter();
  state.chat = { transport, writer, replies: [], waiting: [] };
  $("chat-state").textContent = t(lang, "chat_connected");
  readChatReplies(stream.readable).catch(() => {});
  state.unsubscribeChat = await state.session.subscribe(roomId, "chat", 50, (frame) => {
    const batch = msgpack.decode(frame);
    for (const message of batch.messages || []) { state.chatTimes.push(performance.now()); addChat(message); }
    for (const id of batch.deleted || []) document.querySelector(`#chat [data-id="${id}"]`)?.remove();
  });
}

async function readChatReplies(readable) {
  const reader = readable.getReader();
  let buffer = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer);
    joined.set(value, buffer.length);
    buffer = joined;
    while (buffer.length >= 2) {
      const size = (buffer[0] << 8) | buffer[1];
      if (buffer.length < 2 + size) break;
      const reply = msgpack.decode(buffer.subarray(2, 2 + size));
      buffer = buffer.slice(2 + size);
      if (reply.type === "history") { reply.messages.forEach(addChat); continue; }
      // Every request gets one reply, in order (server/_interaction.py).
      const waiting = state.chat && state.chat.waiting.shift();
      if (reply.type === "notice") fail({ message: reply.message, field: reply.field });
      else if (reply.type === "held_messages") renderHeld(reply.messages);
      state.chat && state.chat.replies.push(reply);
      if (waiting) waiting(reply);
    }
  }
}

/** Send a chat request; resolves with its reply (an "ok", a "notice" refusal, ...), or null
 * without a chat session. */
function chatRequest(request) {
  if (!state.chat) { fail({ message: t(lang, "chat_offline") }); return Promise.resolve(null); }
  clearError();
  const payload = msgpack.encode(request);
  const framed = new Uint8Array(2 + payload.length);
  framed[0] = payload.length >> 8;
  framed[1] = payload.length & 0xff;
  framed.set(payload, 2);
  const chat = state.chat;
  const reply = new Promise((resolve) => chat.waiting.push(resolve));
  chat.writer.write(framed).catch((error) => fail(error));
  return reply;
}

/** A moderation request whose "ok" changes what the console shows. */
async function moderate(request, onOk) {
  const reply = await chatRequest(request);
  if (reply && reply.type === "ok" && onOk) onOk(reply);
  return reply;
}

function noteModerated(account, name, action) {
  const entry = state.moderated.get(account) || { account, name, muted: false, banned: false };
  if (action === "mute") entry.muted = true;
  if (action === "unmute") entry.muted = false;
  if (action === "ban") entry.banned = true;
  if (action === "unban") entry.banned = false;
  if (entry.muted || entry.banned) state.moderated.set(account, entry);
  else state.moderated.delete(account);
  renderModerated();
}

function renderModerated() {
  const list = $("moderated");
  list.replaceChildren();
  for (const entry of state.moderated.values()) {
    const li = document.createElement("li");
    li.dataset.account = entry.account;
    const labels = [entry.muted ? t(lang, "muted_label") : null, entry.banned ? t(lang, "banned_label") : null].filter(Boolean);
    li.append(`${entry.name} (${entry.account}) · ${labels.join(", ")} `);
    for (const action of ["unmute", "unban"]) {
      if ((action === "unmute" && !entry.muted) || (action === "unban" && !entry.banned)) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t(lang, action);
      button.setAttribute("aria-label", `${t(lang, action)}: ${entry.name}`);
      button.addEventListener("click", () => moderate({ type: action, account: entry.account },
        () => noteModerated(entry.account, entry.name, action)));
      li.append(button);
    }
    list.append(li);
  }
}

function renderHeld(messages) {
  state.held = messages;
  const list = $("held");
  list.replaceChildren();
  if (!messages.length) {
    const li = document.createElement("li");
    li.textContent = t(lang, "no_held");
    list.append(li);
  }
  for (const message of messages) {
    const li = document.createElement("li");
    li.dataset.id = message.id;
    li.append(`${message.name}: ${message.text} `);
    for (const action of ["approve", "reject"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t(lang, action);
      button.setAttribute("aria-label", `${t(lang, action)}: ${message.name}: ${message.text}`);
      button.addEventListener("click", async () => {
        await moderate({ type: action, message_id: message.id });
        await chatRequest({ type: "held" });
      });
      li.append(button);
    }
    list.append(li);
  }
}

$("show-held").addEventListener("click", () => chatRequest({ type: "held" }));

$("chat-mode-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target.elements;
  moderate({ type: "mode", slow_mode_s: Number(f.slow_mode_s.value), registered_only: f.registered_only.checked,
    followers_only: f.followers_only.checked, hold_for_review: f.hold_for_review.checked },
  () => { state.modes = { slow_mode_s: Number(f.slow_mode_s.value) }; say("modes_applied"); });
});

$("blocklist-form").addEventListener("submit", (event) => {
  event.preventDefault();
  moderate({ type: "blocklist", terms: listOf(event.target.elements.terms.value) }, () => say("blocklist_saved"));
});

function addChat(message) {
  const list = $("chat");
  if (list.querySelector(`[data-id="${message.id}"]`)) return;
  const li = document.createElement("li");
  li.dataset.id = message.id;
  li.dataset.author = message.author;
  const text = document.createElement("span");
  text.textContent = `${message.name}: ${message.text} `;
  li.append(text);
  if (!message.host) {
    for (const [key, request] of [
      ["delete", { type: "delete", message_id: message.id }],
      ["mute", { type: "mute", account: message.author, seconds: settings.mute_s }],
      ["ban", { type: "ban", account: message.author }]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t(lang, key);
      button.setAttribute("aria-label", `${t(lang, key)}: ${message.name}: ${message.text}`);
      button.addEventListener("click", () => moderate(request,
        () => { if (key !== "delete") noteModerated(message.author, message.name, key); }));
      li.append(button);
    }
  }
  list.append(li);
  while (list.children.length > settings.chat_shown_messages) list.firstElementChild.remove();
}

// --- start -----------------------------------------------------------------------------------

applyBounds();
addSkuRow();
$("lang").value = lang;
$("lang").addEventListener("change", async () => {
  lang = $("lang").value;
  localStorage.setItem("shopcast.lang", lang);
  translate(document, lang);
  clearError();
  // Text made from data is drawn again in the new language.
  if (state.me) renderWho(state.me);
  if (state.room) {
    renderRoom(state.room);
    state.productsSignature = null;
    state.ordersSignature = null;
    await loadProducts(state.room.id);
    await refresh(state.room.id);
    renderModerated();
    if (state.held.length) renderHeld(state.held);
    $("publish-state").textContent = t(lang, state.session ? "publishing" : "not_publishing");
    $("chat-state").textContent = t(lang, state.chat ? "chat_connected" : "chat_offline");
  } else if (state.me && !$("rooms-view").hidden) {
    await showRooms(state.me);
  }
});

function renderWho(me) {
  $("who").textContent = `${t(lang, "logged_in_as")} ${me.display_name || me.name}`;
}
translate(document, lang);

async function route() {
  clearError();
  if (!localStorage.getItem(TOKEN_KEY)) return showLogin();
  const me = await api("GET", "/api/v1/me");
  if (!me.ok) return showLogin();
  state.me = me.data;
  renderWho(me.data);
  $("logout").hidden = false;
  const match = location.pathname.match(/^\/host\/([^/]+)$/);
  if (match) await showRoom(match[1]);
  else await showRooms(me.data);
}

route().catch((error) => fail(error));
