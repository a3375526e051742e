// One order's status (GET /api/v1/orders/ID), refreshed while it may still change.
import { apiOptional, el, frame, money, settings, token, when } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const orderId = decodeURIComponent(location.pathname.split("/")[2] || "");
const main = frame("order");
main.append(el("h1", {}, t("order"), " ", orderId));
const box = el("div", { id: "order", "aria-live": "polite" });
main.append(box);
async function show() {
  const order = await apiOptional("GET", `/api/v1/orders/${encodeURIComponent(orderId)}`).catch((e) => ({ error: e.message }));
  if (order === null) { box.replaceChildren(el("p", {}, t("orders_unavailable"))); return null; }
  if (order.error) { box.replaceChildren(el("p", { class: "error" }, order.error)); return null; }
  const row = (label, value, attrs = {}) => value === null || value === undefined || value === ""
    ? [] : [el("dt", {}, t(label)), el("dd", attrs, String(value))];
  box.replaceChildren(el("dl", {},
    row("status", t(order.status), { id: "order-status", dataset: { status: order.status } }),
    row("quantity", order.quantity),
    row("total", money(order.total_minor, order.currency)),
    row("created", when(order.created_at)),
    order.status === "pending" ? row("hold_expires", when(order.hold_expires_at)) : [],
    row("paid_at", when(order.paid_at)),
    row("tracking", order.tracking_number ? `${order.carrier || ""} ${order.tracking_number}` : null)),
    order.room_id ? el("p", {}, el("a", { href: `/live/${encodeURIComponent(order.room_id)}` }, t("back_to_room"))) : "");
  return order;
}
// Statuses the seller or the payment provider may still move on their own; the page looks again
// every [web] order_poll_interval_s, at most [web] order_poll_max times.
const WAITING = ["pending", "paid"];
if (!token()) main.append(el("p", {}, t("not_logged_in"), " ", el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, t("login"))));
else {
  let order = await show();
  let polls = 0;
  for (; order && WAITING.includes(order.status) && polls < settings.orderPollMax; polls++) {
    await new Promise((r) => setTimeout(r, settings.orderPollIntervalS * 1000));
    order = await show();
  }
  if (order && WAITING.includes(order.status)) main.append(el("p", { class: "muted", id: "order-poll-stopped" }, t("order_poll_stopped")));
}
