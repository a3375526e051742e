// The buyer's orders (GET /api/v1/me/orders).
import { apiOptional, el, frame, money, token, when } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("orders");
main.append(el("h1", {}, t("orders")));
if (!token()) {
  main.append(el("p", {}, t("not_logged_in"), " ", el("a", { href: "/login?next=/orders" }, t("login"))));
} else {
  const answer = await apiOptional("GET", "/api/v1/me/orders").catch(() => null);
  if (answer === null) main.append(el("p", {}, t("orders_unavailable")));
  else if (!answer.orders.length) main.append(el("p", {}, t("no_orders")));
  else main.append(el("table", { id: "orders" },
    el("thead", {}, el("tr", {}, el("th", {}, t("order")), el("th", {}, t("status")), el("th", {}, t("total")), el("th", {}, t("created")))),
    el("tbody", {}, ...answer.orders.map((o) => el("tr", {},
      el("td", {}, el("a", { href: `/orders/${encodeURIComponent(o.id)}` }, o.id)),
      el("td", {}, t(o.status)), el("td", {}, money(o.total_minor, o.currency)), el("td", {}, when(o.created_at)))))));
}
