// Search rooms by words, hashtag or host (GET /api/v1/rooms/search).
import { api, el, frame, message, roomCard } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("search");
const params = new URLSearchParams(location.search);
const q = el("input", { id: "q", name: "q", type: "search", value: params.get("q") || "" });
const status = el("p", { role: "status" });
const list = el("ul", { class: "room-list", id: "results", "aria-label": t("results") });
main.append(el("h1", {}, t("search")),
  el("form", { role: "search", class: "stack", method: "get", action: "/search" },
    el("label", { for: "q" }, t("search_label")), q, el("button", { type: "submit", class: "primary" }, t("search_button"))),
  status, list);
if (params.get("q")) {
  try {
    const page = await api("GET", `/api/v1/rooms/search?q=${encodeURIComponent(params.get("q"))}&state=any`);
    for (const room of page.rooms) list.append(roomCard(room));
    message(status, `${t("results")}: ${page.total}`);
  } catch (e) { message(status, `${t("error")}: ${e.message}`, "error"); }
}
