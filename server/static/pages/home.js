// Home: live rooms (the demo room first), recommendations for a logged-in account, upcoming
// rooms, and the replays of ended rooms.
import { apiOptional, el, frame, roomCard, settings, token } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const main = frame("home");
const live = el("ul", { class: "room-list", id: "live-rooms" });
const recommended = el("ul", { class: "room-list", id: "recommended-rooms", "aria-labelledby": "recommended-title" });
const upcoming = el("ul", { class: "room-list", id: "upcoming-rooms" });
const replays = el("ul", { class: "room-list", id: "replay-rooms" });
const recommendedSection = el("section", { hidden: true }, el("h2", { id: "recommended-title" }, t("recommended")), recommended);
main.append(el("h1", {}, t("live_now")), live, recommendedSection,
  el("h2", {}, t("upcoming_rooms")), upcoming, el("h2", {}, t("ended_rooms")), replays);

if (settings.demoRoom) {
  live.append(el("li", { class: "room-card" },
    el("a", { href: `/live/${encodeURIComponent(settings.demoRoom)}` }, t("demo_title")),
    el("span", { class: "badge live" }, t("playing")), el("p", { class: "muted" }, t("demo_desc"))));
}
const [liveRooms, soon, ended, picks] = await Promise.all([
  apiOptional("GET", "/api/v1/rooms/search?state=live").catch(() => null),
  apiOptional("GET", "/api/v1/rooms/upcoming").catch(() => null),
  apiOptional("GET", "/api/v1/rooms/search?state=ended").catch(() => null),
  token() ? apiOptional("GET", "/api/v1/me/recommendations").catch(() => null) : null,
]);
for (const room of liveRooms?.rooms || []) live.append(roomCard(room));
for (const room of soon?.rooms || []) upcoming.append(roomCard(room));
for (const room of ended?.rooms || []) replays.append(roomCard(room));
for (const pick of picks?.recommendations || []) {
  const card = roomCard(pick.room);
  card.append(el("p", { class: "muted reasons" }, pick.reasons.map((r) => r.detail).join(" · ")));
  recommended.append(card);
}
recommendedSection.hidden = !recommended.children.length;
for (const list of [live, upcoming, replays]) if (!list.children.length) list.append(el("li", { class: "muted" }, t("no_rooms")));
