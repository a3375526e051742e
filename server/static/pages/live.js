// The live room page (/live/ID), its replay (/replay/ID) and embeddable form (/embed/ID):
// video, view count, host, product cards in step with the video, Buy Now, chat with emoji and
// reactions, share link.
import { ApiError, account, api, apiOptional, el, frame, money, roomEvent, settings, token, viewerId } from "../lib/api.js";
import { ChatSession } from "../lib/chat.js";
import { t } from "../lib/i18n.js";
import { decode, splitHangFrame } from "../lib/msgpack.js";
import { DatagramPlayer } from "../lib/datagram.js";
import { RoomPlayer, hasWebTransport } from "../lib/player.js";

const [, mode, rawRoomId] = location.pathname.split("/");
const roomId = decodeURIComponent(rawRoomId || "");
const embed = mode === "embed";
const replay = mode === "replay";
const params = new URLSearchParams(location.search);
const datagramMode = params.get("mode") === "datagram";
const EMOJI = ["😀", "😂", "😍", "🥰", "😮", "😢", "👍", "👏", "🙏", "🔥", "❤️", "🎉", "💯", "🛍️", "💸", "⭐", "👀", "🤩", "😎", "🤔", "✅", "🚀", "🎁", "🌸"];
const REACTION_EMOJI = { like: "👍", heart: "❤️", fire: "🔥", clap: "👏", laugh: "😂" };

// What tests and the stats overlay read.
const hook = { pinsShown: [], chatMessages: [], viewers: null, events: [], chatOpen: false, notices: [] };
window.shopcast = hook;

const main = frame(replay ? "replay" : "watch", { embed });
main.classList.add("live-page");

const stage = el("section", { class: "stage", "aria-label": "video" });
const videoBox = el("div", { class: "video" });
const status = el("p", { class: "status", role: "status" }, t("connecting"));
const viewerCount = el("span", { class: "viewers", "aria-live": "polite", id: "viewer-count" }, "");
const unmute = el("button", { type: "button", class: "unmute", id: "unmute", "aria-pressed": "false" }, "🔇 ", t("unmute"));
const hostBox = el("div", { class: "host-info", id: "host-info" });
const cards = el("section", { class: "cards", id: "cards", "aria-label": t("products"), "aria-live": "polite" });
stage.append(videoBox, el("div", { class: "overlay" }, el("span", { class: "badge live" }, replay ? t("replay") : t("playing")), viewerCount, unmute), status);

const chatLog = el("ol", { class: "chat-log", id: "chat-log", role: "log", "aria-label": t("chat") });
const chatInput = el("input", { id: "chat-input", name: "text", autocomplete: "off", maxlength: "500", "aria-label": t("chat_input"), placeholder: t("chat_input") });
const emojiButton = el("button", { type: "button", id: "emoji-button", "aria-expanded": "false", "aria-controls": "emoji-picker", "aria-label": t("emoji_picker") }, "😀");
const emojiPicker = el("div", { id: "emoji-picker", class: "emoji-picker", role: "group", "aria-label": t("emoji_picker"), hidden: true },
  ...EMOJI.map((e) => el("button", { type: "button", "aria-label": `${t("emoji")} ${e}`, onclick: () => insertEmoji(e) }, e)));
const chatForm = el("form", { class: "chat-form", id: "chat-form" }, emojiButton, chatInput, el("button", { type: "submit", id: "chat-send" }, t("send")));
const chatNotice = el("p", { class: "chat-notice", id: "chat-notice", role: "status" });
const reactionCounts = {};
const reactionBar = el("div", { class: "reactions", role: "group", "aria-label": t("reactions") },
  ...(settings.reactions || []).map((kind) => {
    const count = el("span", { class: "count", id: `reaction-count-${kind}` }, "0");
    reactionCounts[kind] = count;
    return el("button", { type: "button", "aria-label": t(`reaction_${kind}`), dataset: { reaction: kind }, onclick: () => react(kind) },
      REACTION_EMOJI[kind] || kind, " ", count);
  }));
const chat = el("section", { class: "chat", "aria-label": t("chat") }, el("h2", {}, t("chat")), chatLog, chatNotice, reactionBar, emojiPicker, chatForm);

const shareUrl = el("input", { id: "share-url", readonly: true, "aria-label": t("share"), value: `${location.origin}/live/${encodeURIComponent(roomId)}?from=share` });
const shareCopied = el("span", { role: "status", class: "muted" });
const embedCode = el("input", { id: "embed-code", readonly: true, "aria-label": t("embed_code"),
  value: `<iframe src="${location.origin}/embed/${encodeURIComponent(roomId)}" allow="autoplay; fullscreen" width="400" height="720"></iframe>` });
const share = el("section", { class: "share", "aria-label": t("share") },
  el("label", { for: "share-url" }, t("share")), shareUrl,
  el("button", { type: "button", id: "copy-link", onclick: copyLink }, t("copy_link")), shareCopied,
  el("label", { for: "embed-code" }, t("embed_code")), embedCode,
  el("a", { id: "mode-switch", href: `${location.pathname}${datagramMode ? "" : "?mode=datagram"}` },
    datagramMode ? t("stream_mode") : t("datagram_mode")));

const side = el("aside", { class: "side" }, hostBox, cards, chat, embed ? null : share);
main.append(stage, side);
if (embed) main.append(el("a", { href: `/live/${encodeURIComponent(roomId)}`, target: "_blank", class: "open-full" }, t("fullscreen")));
if (replay) {
  const seek = el("input", { id: "seek", type: "number", min: "0", step: "1", "aria-label": t("seek") });
  main.append(el("form", { class: "seek", onsubmit: (e) => { e.preventDefault(); startPlayer(`${roomId}/replay@${Math.round(Number(seek.value) * 1e6)}`); } },
    el("label", { for: "seek" }, t("seek")), seek, el("button", { type: "submit" }, t("go"))));
}

// --- room data and host -------------------------------------------------------------------

let room = null;
async function loadRoom() {
  try {
    const page = await api("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}/page`);
    room = page.room;
    setShape(room.orientation === "portrait" ? 9 : 16, room.orientation === "portrait" ? 16 : 9);
    document.title = `${room.title} · shopcast`;
    const host = room.host || {};
    const figures = el("p", { class: "muted host-figures", id: "host-figures" });
    const follow = el("button", { type: "button", id: "follow", "aria-pressed": "false", hidden: true }, t("follow"));
    hostBox.replaceChildren(
      host.photo_url ? el("img", { src: host.photo_url, alt: "", class: "avatar" }) : el("span", { class: "avatar" }, (host.display_name || "?")[0]),
      el("div", {}, el("strong", { id: "host-name" }, host.display_name || host.name || ""), " ",
        el("span", { class: "muted" }, t("host")), el("p", { class: "room-title" }, room.title), figures), follow);
    if (host.name) showHost(host.name, figures, follow);
  } catch (e) {
    if (roomId === settings.demoRoom) {
      hostBox.replaceChildren(el("span", { class: "avatar" }, "S"),
        el("div", {}, el("strong", { id: "host-name" }, "shopcast"), " ", el("span", { class: "muted" }, t("host")),
          el("p", { class: "room-title" }, t("demo_title"))));
    } else if (e instanceof ApiError && e.status === 404) {
      hostBox.replaceChildren(el("p", {}, t("offline")));
    }
  }
}

/** The host's public figures, and a Follow button for logged-in viewers. */
async function showHost(name, figures, follow) {
  const path = `/api/v1/accounts/${encodeURIComponent(name)}`;
  const profile = await apiOptional("GET", path).catch(() => null);
  if (!profile) return;
  const st = profile.stats || {};
  figures.textContent = `${st.followers ?? 0} ${t("followers")} · ${st.live_events ?? 0} ${t("live_events")}`;
  const me = account();
  if (!token() || !me || me.name === name) return;
  let following = false;
  follow.hidden = false;
  follow.addEventListener("click", async () => {
    try {
      await api(following ? "DELETE" : "PUT", `${path}/follow`);
      following = !following;
      follow.setAttribute("aria-pressed", String(following));
      follow.textContent = following ? t("following") : t("follow");
      const again = await apiOptional("GET", path);
      if (again) figures.textContent = `${again.stats.followers} ${t("followers")} · ${again.stats.live_events} ${t("live_events")}`;
    } catch (e) { figures.textContent = e.message; }
  });
}

// --- the player's shape ------------------------------------------------------------------

/** Size the player for a width:height video: the room's orientation before the first frame,
 * the decoded frame's size after it (app.css reads --video-aspect and .portrait). */
function setShape(width, height) {
  if (!(width > 0 && height > 0)) return;
  main.classList.toggle("portrait", height > width);
  main.classList.toggle("landscape", height <= width);
  main.style.setProperty("--video-aspect", `${width} / ${height}`);
  hook.shape = { width, height };
}
setShape(16, 9);

// --- the player ---------------------------------------------------------------------------

/** This browser's viewer token for the room (POST /api/v1/rooms/ID/viewer-token): the account's
 * when logged in, else a guest's whose id the browser keeps, so statistics count browsers. */
let viewerTokenPromise = null;
function roomViewerToken() {
  viewerTokenPromise ??= apiOptional("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/viewer-token`,
    token() ? {} : { guest_id: viewerId() }).then((a) => a?.token).catch(() => undefined);
  return viewerTokenPromise;
}

/** A statistics event of this page (replay pages say so), under the viewer token. */
async function pageEvent(event) {
  roomEvent(roomId, { ...event, replay }, { bearer: await roomViewerToken() });
}

let player = null;
async function startPlayer(broadcast) {
  if (!hasWebTransport()) {
    status.textContent = t("no_webtransport");
    status.classList.add("error");
    hook.noWebTransport = true;
    return;
  }
  if (player) { player.remove(); clearInterval(statusPoll); pending.length = 0; }
  let mediaToken;
  if (token() && room && room.state === "rehearsal") {
    mediaToken = (await apiOptional("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/media-token`, {}))?.token;
  }
  mediaToken ??= await roomViewerToken();
  hook.viewerToken = mediaToken;
  player = datagramMode
    ? new DatagramPlayer(videoBox, { broadcast, path: settings.datagramPath, latencyMs: settings.playerLatencyMs, token: mediaToken, limits: settings.datagram })
    : new RoomPlayer(videoBox, { broadcast, moqPath: settings.moqPath, latencyMs: settings.playerLatencyMs,
      token: mediaToken, announced: !replay });
  hook.player = player;
  hook.playerStarts = (hook.playerStarts || 0) + 1;
  hook.stats = () => player.stats();
  player.onTrack("viewers", (payload) => showViewers(decode(payload)));
  player.onTrack("chat", (payload) => applyBatch(decode(payload)), () => {});
  player.onTrack("commerce", (payload) => queueCommerce(payload), () => pollPins());
  await player.start();
  statusPoll = setInterval(() => {
    const s = player.stats();
    if (s.framesDecoded > 0) {
      status.textContent = ""; status.className = "status";
      if (s.width !== hook.shape?.width || s.height !== hook.shape?.height) setShape(s.width, s.height);
    }
    else if (s.status === "offline") status.textContent = t("offline");
  }, 500);
}
let statusPoll = null;

unmute.addEventListener("click", () => {
  if (!player) return;
  player.muted = !player.muted;
  unmute.setAttribute("aria-pressed", String(!player.muted));
  unmute.replaceChildren(player.muted ? "🔇 " : "🔊 ", player.muted ? t("unmute") : t("mute"));
});

function showViewers(snapshot) {
  hook.viewers = snapshot;
  viewerCount.textContent = `👁 ${snapshot.concurrent} ${t("viewers")}`;
  viewerCount.title = `${t("peak")} ${snapshot.peak}`;
}

// --- product cards, in step with the video -------------------------------------------------

const pending = [];          // commerce events not yet reached by the playout time
const pins = new Map();      // pin id -> pin shown now

function queueCommerce(payload) {
  const { timestampUs, payload: body } = splitHangFrame(payload);
  const event = decode(body);
  pending.push({ at: timestampUs, event });
  pending.sort((a, b) => a.at - b.at);
  applyDue();
}

function applyDue() {
  const now = player ? player.playoutUs() : undefined;
  while (pending.length && now !== undefined && pending[0].at <= now) applyCommerce(pending.shift().event);
}

function applyCommerce(event) {
  if (event.type === "state") {
    hook.states = (hook.states || 0) + 1;
    pins.clear();
    for (const pin of event.pins || []) pins.set(pin.id, pin);
  } else if (event.type === "pin") {
    pins.set(event.pin.id, event.pin);
  } else if (event.type === "unpin") {
    pins.delete(event.pin_id);
  }
  renderCards();
}

let polling = false;
async function pollPins() {
  // No commerce track (that part of the server is absent): the REST list, without media sync.
  if (polling) return;
  polling = true;
  for (;;) {
    let answer;
    try { answer = await apiOptional("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}/pins`); } catch { answer = undefined; }
    if (answer === null) return;   // not on this server: no cards, quietly
    if (answer) applyCommerce({ type: "state", pins: answer.pins || [] });
    await new Promise((r) => setTimeout(r, settings.pinsPollIntervalS * 1000));
  }
}

function countdown(pin) {
  const sale = pin.flash_sale;
  if (!sale) return null;
  const now = Date.now();
  const starts = Date.parse(sale.starts_at), ends = Date.parse(sale.ends_at);
  const fmt = (ms) => { const s = Math.max(0, Math.ceil(ms / 1000)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
  if (now < starts) return `${t("starts_in")} ${fmt(starts - now)}`;
  return `${t("ends_in")} ${fmt(ends - now)}`;
}

// Cards are updated in place, keyed by pin id: a commerce state arrives every few seconds and
// rebuilding the cards would take the keyboard focus off Buy now.
const cardNodes = new Map();   // pin id -> { card, parts }
const refreshed = new Set();   // replay: pins whose stock was asked of the API

function cardParts(pin) {
  const parts = {
    img: el("img", { alt: "" }),
    title: el("h3", {}),
    flash: el("p", { class: "flash" }, "⚡ ", t("flash_sale"), " ", el("span", { class: "countdown", dataset: { pin: pin.id } })),
    price: el("p", { class: "price" }),
    coupon: el("p", { class: "coupon" }),
    stock: el("p", { class: "stock" }),
    buy: el("button", { type: "button", class: "buy", onclick: () => openCheckout(pins.get(pin.id) || pin) }, t("buy_now")),
  };
  const card = el("article", { class: "product-card", dataset: { pin: pin.id } },
    parts.img, el("div", {}, parts.title, parts.flash, parts.price, parts.coupon, parts.stock, parts.buy));
  return { card, parts };
}

function setText(node, value) { if (node.textContent !== value) node.textContent = value; }

function updateCard({ card, parts }, pin) {
  const product = pin.product || {};
  const sale = pin.flash_sale;
  const price = sale ? sale.price_minor : product.price_minor;
  const stock = sale ? Math.max(0, sale.stock_cap - sale.sold) : product.stock;
  const src = product.images && product.images[0] ? product.images[0] : "/static/img/product.svg";
  if (parts.img.getAttribute("src") !== src) parts.img.setAttribute("src", src);
  parts.img.alt = product.title || "";
  card.setAttribute("aria-label", product.title || "");
  setText(parts.title, product.title || "");
  parts.flash.hidden = !sale;
  if (sale) setText(parts.flash.querySelector(".countdown"), countdown(pin));
  const priceText = `${sale ? money(product.price_minor, product.currency) : ""} ${money(price, product.currency)}`;
  if (parts.price.dataset.text !== priceText) {
    parts.price.dataset.text = priceText;
    parts.price.replaceChildren(sale ? el("s", {}, money(product.price_minor, product.currency)) : "", " ", money(price, product.currency));
  }
  parts.coupon.hidden = !pin.coupon;
  setText(parts.coupon, pin.coupon ? pin.coupon.code : "");
  setText(parts.stock, stock > 0 ? `${t("stock")}: ${stock}` : t("sold_out"));
  parts.buy.disabled = !(stock > 0);
}

/** Replay: the stock shown is the recording's; ask the API for today's once a card shows. */
async function refreshStock(pin) {
  const productId = pin.product?.id;
  if (!replay || !productId || refreshed.has(pin.id)) return;
  refreshed.add(pin.id);
  const product = await apiOptional("GET", `/api/v1/products/${encodeURIComponent(productId)}`).catch(() => null);
  if (!product) return;
  const now = pins.get(pin.id);
  if (!now) return;
  // Only the stock is taken from the API (GET /api/v1/products/ID names prices differently).
  const skuStock = new Map((product.skus || []).map((s) => [s.id, s.stock]));
  const skus = (now.product.skus || []).map((s) => (skuStock.has(s.id) ? { ...s, stock: skuStock.get(s.id) } : s));
  const stock = [...skuStock.values()].reduce((n, v) => n + (v || 0), 0);
  // A sale's cap is the recording's; a sold-out product is sold out whatever the card says.
  const saleLeft = now.flash_sale ? Math.max(0, now.flash_sale.stock_cap - now.flash_sale.sold) : null;
  const updated = { ...now, product: { ...now.product, skus, stock } };
  if (now.flash_sale) updated.flash_sale = { ...now.flash_sale, stock_cap: now.flash_sale.sold + Math.min(saleLeft, stock) };
  pins.set(pin.id, updated);
  liveStock.set(pin.id, updated);
  renderCards();
}
const liveStock = new Map();   // replay: pin id -> the pin with the API's stock

function renderCards() {
  const shown = [...pins.values()].map((pin) => {
    // A replayed state carries the recording's stock: keep the API's once known.
    const known = liveStock.get(pin.id);
    if (known && known !== pin) { pins.set(pin.id, known); return known; }
    return pin;
  });
  const keep = new Set(shown.map((pin) => pin.id));
  for (const [id, node] of cardNodes) if (!keep.has(id)) { node.card.remove(); cardNodes.delete(id); }
  shown.forEach((pin, i) => {
    let node = cardNodes.get(pin.id);
    if (!node) { node = cardParts(pin); cardNodes.set(pin.id, node); }
    updateCard(node, pin);
    // Move only what is out of place: moving a node takes the focus off it.
    if (cards.children[i] !== node.card) cards.insertBefore(node.card, cards.children[i] || null);
    if (!hook.pinsShown.includes(pin.id)) {
      hook.pinsShown.push(pin.id);
      pageEvent({ type: "impression", pin_id: pin.id, product_id: pin.product?.id });
      refreshStock(pin);
    }
  });
  hook.cardRenders = (hook.cardRenders || 0) + 1;
}

setInterval(() => {
  applyDue();
  for (const node of cards.querySelectorAll(".countdown")) {
    const pin = pins.get(node.dataset.pin);
    if (pin) node.textContent = countdown(pin);
  }
}, 100);

// --- Buy Now ------------------------------------------------------------------------------

const dialog = el("dialog", { id: "checkout", "aria-labelledby": "checkout-title" });
document.body.append(dialog);

function openCheckout(pin) {
  pageEvent({ type: "click", pin_id: pin.id, product_id: pin.product?.id });
  if (!token()) { location.href = `/login?next=${encodeURIComponent(location.pathname)}`; return; }
  const product = pin.product || {};
  const skus = product.skus || [];
  const saleSku = pin.flash_sale && pin.flash_sale.sku_id;
  const sku = el("select", { id: "checkout-sku", name: "sku" }, ...skus.map((s) => el("option",
    { value: s.id, disabled: s.stock <= 0 || (saleSku && s.id !== saleSku), selected: s.id === saleSku },
    `${s.name} · ${money(s.id === saleSku ? pin.flash_sale.price_minor : s.price_minor, s.currency || product.currency)}`)));
  const quantity = el("input", { id: "checkout-quantity", name: "quantity", type: "number", min: "1", max: String(pin.flash_sale?.per_buyer_limit || 99), value: "1" });
  const error = el("p", { role: "alert", class: "error" });
  const form = el("form", { method: "dialog" },
    el("h2", { id: "checkout-title" }, t("checkout"), ": ", product.title),
    el("label", { for: "checkout-sku" }, t("variant")), sku,
    el("label", { for: "checkout-quantity" }, t("quantity")), quantity, error,
    el("div", { class: "actions" },
      el("button", { type: "button", onclick: () => dialog.close() }, "✕"),
      el("button", { type: "submit", id: "checkout-pay", class: "primary" }, t("pay"))));
  const idempotencyKey = crypto.randomUUID();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const order = await api("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/orders`,
        { sku_id: sku.value, quantity: Number(quantity.value), pin_id: pin.id, ...(pin.coupon ? { coupon_code: pin.coupon.code } : {}) },
        { "idempotency-key": idempotencyKey });
      const payment = await apiOptional("POST", `/api/v1/orders/${encodeURIComponent(order.id)}/payment`, {});
      location.href = payment ? payment.payment_url : `/orders/${encodeURIComponent(order.id)}`;
    } catch (err) { error.textContent = `${t("error")}: ${err.message}`; }
  });
  dialog.replaceChildren(form);
  dialog.showModal();
  sku.focus();
}

// --- chat ---------------------------------------------------------------------------------

let session = null;
const shownIds = new Set();

function addMessage(m) {
  if (shownIds.has(m.id)) return;
  shownIds.add(m.id);
  hook.chatMessages.push(m);
  const parent = m.reply_to ? hook.chatMessages.find((x) => x.id === m.reply_to) : null;
  const item = el("li", { dataset: { id: String(m.id), author: m.author }, class: m.host ? "from-host" : "" },
    parent ? el("span", { class: "reply-to muted", dataset: { ref: String(parent.id) } }, "↪ ", parent.name, ": ", parent.text.slice(0, 40), " ") : null,
    el("strong", { class: `role-${m.role}` }, m.name), m.host ? el("span", { class: "badge" }, t("host")) : null, " ",
    el("span", { class: "text" }, m.text), " ",
    el("button", { type: "button", class: "reply", "aria-label": `${t("reply")}: ${m.name}`, onclick: () => startReply(m) }, "↩"));
  chatLog.append(item);
  while (chatLog.children.length > settings.chatMessagesShown) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
}

function removeMessage(id) {
  shownIds.add(id);
  chatLog.querySelector(`li[data-id="${id}"]`)?.remove();
  // A removed message leaves no trace in the replies quoting it.
  for (const quote of chatLog.querySelectorAll(`.reply-to[data-ref="${id}"]`)) quote.textContent = "↪ … ";
  hook.chatMessages = hook.chatMessages.filter((m) => m.id !== id);
}

function applyBatch(batch) {
  for (const m of batch.messages || []) addMessage(m);
  for (const id of batch.deleted || []) removeMessage(id);
  for (const [kind, n] of Object.entries(batch.reactions || {})) {
    const node = reactionCounts[kind];
    if (node) node.textContent = String(Number(node.textContent) + n);
    const burst = el("span", { class: "burst", "aria-hidden": "true" }, REACTION_EMOJI[kind] || kind);
    stage.append(burst);
    setTimeout(() => burst.remove(), 1500);
  }
}

function onChatAnswer(answer) {
  if (answer.type === "history") for (const m of answer.messages) addMessage(m);
  else if (answer.type === "notice") {
    hook.notices.push(answer);
    chatNotice.textContent = answer.code === "muted" ? `${t("muted_notice")} (${Math.ceil(answer.retry_after_s || 0)} s)` : answer.message;
    chatNotice.className = "chat-notice error";
  } else if (answer.type === "held") chatNotice.textContent = t("held");
  else if (answer.type === "ok") { chatNotice.textContent = ""; chatNotice.className = "chat-notice"; }
}

async function chatToken() {
  const answer = await apiOptional("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/media-token`, {});
  if (answer) return answer.token;
  if (roomId === settings.demoRoom) return (await api("POST", "/api/v1/demo/media-token", {})).token;
  return null;
}

async function openChat() {
  if (!token()) {
    chatForm.hidden = true;
    chatNotice.replaceChildren(el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, t("login_to_chat")));
    return;
  }
  if (!hasWebTransport()) { chatForm.hidden = true; return; }
  try {
    const roomToken = await chatToken();
    if (!roomToken) throw new Error(t("chat_unavailable"));
    session = new ChatSession({
      path: settings.chatPath, roomId, token: roomToken, onMessage: onChatAnswer,
      onClose: (info) => { hook.chatOpen = false; chatNotice.textContent = info?.reason || t("chat_unavailable"); chatForm.hidden = true; },
    });
    await session.open();
    hook.chatOpen = true;
  } catch (e) {
    chatForm.hidden = true;
    chatNotice.textContent = e.message || t("chat_unavailable");
  }
}

let replyTo = null;
const replyNote = el("p", { class: "muted", id: "reply-note", hidden: true });
chatForm.before(replyNote);

function startReply(m) {
  replyTo = m.id;
  replyNote.replaceChildren(`${t("reply")} → ${m.name}: ${m.text.slice(0, 40)} `,
    el("button", { type: "button", "aria-label": t("cancel_reply"), onclick: () => { replyTo = null; replyNote.hidden = true; chatInput.focus(); } }, "✕"));
  replyNote.hidden = false;
  chatInput.focus();
}

chatForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = chatInput.value.trim();
  if (!text || !session) return;
  chatInput.value = "";
  const request = { type: "message", text };
  if (replyTo !== null) request.reply_to = replyTo;
  replyTo = null;
  replyNote.hidden = true;
  await session.send(request);
});

function react(kind) {
  if (session) session.send({ type: "reaction", kind });
}

function insertEmoji(emoji) {
  emojiPicker.hidden = true;
  emojiButton.setAttribute("aria-expanded", "false");
  const start = chatInput.selectionStart ?? chatInput.value.length;
  const end = chatInput.selectionEnd ?? chatInput.value.length;
  chatInput.value = chatInput.value.slice(0, start) + emoji + chatInput.value.slice(end);
  chatInput.focus();
  chatInput.setSelectionRange(start + emoji.length, start + emoji.length);
}

emojiButton.addEventListener("click", () => {
  emojiPicker.hidden = !emojiPicker.hidden;
  emojiButton.setAttribute("aria-expanded", String(!emojiPicker.hidden));
  if (!emojiPicker.hidden) emojiPicker.querySelector("button").focus();
});
// The picker is a grid: arrow keys move between emoji, Escape closes it.
const EMOJI_COLUMNS = 8;
emojiPicker.addEventListener("keydown", (e) => {
  const buttons = [...emojiPicker.querySelectorAll("button")];
  const at = buttons.indexOf(document.activeElement);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: EMOJI_COLUMNS, ArrowUp: -EMOJI_COLUMNS }[e.key];
  if (step !== undefined && at >= 0) {
    e.preventDefault();
    buttons[Math.min(buttons.length - 1, Math.max(0, at + step))].focus();
  } else if (e.key === "Escape") {
    emojiPicker.hidden = true; emojiButton.setAttribute("aria-expanded", "false"); emojiButton.focus();
  }
});

async function copyLink() {
  shareUrl.select();
  try { await navigator.clipboard.writeText(shareUrl.value); } catch { document.execCommand?.("copy"); }
  shareCopied.textContent = t("copied");
  pageEvent({ type: "share" });
}

// --- start --------------------------------------------------------------------------------

pageEvent({ type: "arrival", source: ["upcoming", "share"].includes(params.get("from")) ? params.get("from") : "direct" });
await loadRoom();
if (replay && !settings.replayAvailable) {
  // Never the live broadcast under a Replay badge: say so, and link to the live page.
  status.classList.add("error");
  status.replaceChildren(t("no_replay"), " ", el("a", { href: `/live/${encodeURIComponent(roomId)}`, id: "to-live" }, t("to_live")));
  hook.noReplay = true;
} else {
  await startPlayer(roomId);
}
openChat();
