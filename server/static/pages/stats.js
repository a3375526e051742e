// A room's statistics (GET /api/v1/rooms/ID/statistics) and its chart.svg; host and operators.
import { ApiError, api, el, frame, message, token } from "../lib/api.js";
import { t } from "../lib/i18n.js";

const roomId = decodeURIComponent(location.pathname.split("/")[2] || "");
const main = frame("stats");
const status = el("p", { role: "status", id: "status" });
main.append(el("h1", {}, t("stats"), " · ", roomId), status);
try {
  const stats = await api("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}/statistics`);
  const rows = Object.entries(stats).filter(([, v]) => typeof v !== "object" || v === null);
  main.append(el("table", { id: "stats-table" }, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, String(v)))))),
    el("details", {}, el("summary", {}, "JSON"), el("pre", { id: "stats-json" }, JSON.stringify(stats, null, 2))));
  // The chart needs the same bearer token, so it is fetched and shown from a blob.
  const response = await fetch(`/api/v1/rooms/${encodeURIComponent(roomId)}/statistics/chart.svg`, { headers: { authorization: `Bearer ${token()}` } });
  if (response.ok) {
    const url = URL.createObjectURL(await response.blob());
    main.append(el("h2", {}, t("chart")), el("img", { id: "stats-chart", src: url, alt: `${t("chart")}: ${t("stats")}`, style: "max-width:100%;background:#fff" }));
  }
  // The CSV needs the bearer token too: fetched, then saved from a blob.
  main.append(el("p", {}, el("button", { type: "button", id: "stats-csv", onclick: async () => {
    const csv = await fetch(`/api/v1/rooms/${encodeURIComponent(roomId)}/statistics?format=csv`, { headers: { authorization: `Bearer ${token()}` } });
    const link = el("a", { href: URL.createObjectURL(await csv.blob()), download: `stats-${roomId}.csv` });
    link.click();
  } }, t("download_csv"))));
} catch (e) {
  if (e instanceof ApiError && e.status === 404 && e.field !== "room_id") message(status, t("stats_unavailable"));
  else if (e instanceof ApiError && (e.status === 401 || e.status === 403)) message(status, `${t("error")}: ${e.message}`, "error");
  else message(status, `${t("error")}: ${e.message}`, "error");
}
