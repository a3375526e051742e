// Home: live rooms (the demo room first) and upcoming rooms.
import { apiOptional, el, frame, roomCard, settings } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("home");
const live = el("ul", { class: "room-list", id: "live-rooms" });
const upcoming = el("ul", { class: "room-list", id: "upcoming-rooms" });
main.append(el("h1", {}, t("live_now")), live, el("h2", {}, t("upcoming_rooms")), upcoming);

if (settings.demoRoom) {
  live.append(el("li", { class: "room-card" },
    el("a", { href: `/live/${encodeURIComponent(settings.demoRoom)}` }, t("demo_title")),
    el("span", { class: "badge live" }, t("playing")), el("p", { class: "muted" }, t("demo_desc"))));
}
const liveRooms = await apiOptional("GET", "/api/v1/rooms/search?state=live").catch(() => null);
for (const room of liveRooms?.rooms || []) live.append(roomCard(room));
const soon = await apiOptional("GET", "/api/v1/rooms/upcoming").catch(() => null);
for (const room of soon?.rooms || []) upcoming.append(roomCard(room));
if (!live.children.length) live.append(el("li", { class: "muted" }, t("no_rooms")));
if (!upcoming.children.length) upcoming.append(el("li", { class: "muted" }, t("no_rooms")));
