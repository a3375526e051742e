// Search rooms (GET /api/v1/rooms/search): words, a hashtag, the host's account name, a range of
// start times and the room's state; ended rooms link to their replay.
import { api, el, frame, message, roomCard } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("search");
const params = new URLSearchParams(location.search);
const FILTERS = ["q", "hashtag", "host", "from", "to", "state"];
const input = (id, label, attrs = {}) => {
  const node = el("input", { id, name: id, value: params.get(id) || "", ...attrs });
  return [node, el("label", { for: id }, t(label), node)];
};
const [q, qLabel] = input("q", "search_label", { type: "search" });
const [, hashtagLabel] = input("hashtag", "hashtag", { type: "text", pattern: "#?\\w+", placeholder: "#shoes" });
const [, hostLabel] = input("host", "host_name", { type: "text", autocomplete: "off" });
const [, fromLabel] = input("from", "from_date", { type: "datetime-local" });
const [, toLabel] = input("to", "to_date", { type: "datetime-local" });
const state = el("select", { id: "state", name: "state" },
  ...[["", "any_state"], ["live", "state_live"], ["scheduled", "state_scheduled"], ["ended", "state_ended"]].map(([value, label]) =>
    el("option", { value, selected: (params.get("state") || "") === value }, t(label))));
const status = el("p", { role: "status", id: "status" });
const list = el("ul", { class: "room-list", id: "results", "aria-label": t("results") });
main.append(el("h1", {}, t("search")),
  el("form", { role: "search", class: "stack search-form", method: "get", action: "/search" },
    qLabel,
    el("div", { class: "search-filters" }, hashtagLabel, hostLabel, fromLabel, toLabel,
      el("label", { for: "state" }, t("state"), state)),
    el("button", { type: "submit", class: "primary" }, t("search_button"))),
  status, list);

/** A datetime-local value (the browser's time zone) as RFC 3339 UTC. */
const rfc3339 = (value) => new Date(value).toISOString().replace(/\.\d{3}Z$/, "Z");

if (FILTERS.some((name) => params.get(name))) {
  const query = new URLSearchParams();
  for (const name of ["q", "hashtag", "host"]) if (params.get(name)) query.set(name, params.get(name));
  for (const name of ["from", "to"]) if (params.get(name)) query.set(name, rfc3339(params.get(name)));
  query.set("state", params.get("state") || "any");
  try {
    const page = await api("GET", `/api/v1/rooms/search?${query}`);
    for (const room of page.rooms) list.append(roomCard(room));
    message(status, `${t("results")}: ${page.total}`);
  } catch (e) { message(status, `${t("error")}: ${e.message}${e.field ? ` (${e.field})` : ""}`, "error"); }
}
