// Upcoming rooms, soonest first.
import { apiOptional, el, frame, roomCard } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("upcoming");
const list = el("ul", { class: "room-list", id: "upcoming-rooms" });
main.append(el("h1", {}, t("upcoming_rooms")), list);
const page = await apiOptional("GET", "/api/v1/rooms/upcoming").catch(() => null);
for (const room of page?.rooms || []) list.append(roomCard(room));
if (!list.children.length) list.append(el("li", { class: "muted" }, t("no_rooms")));
