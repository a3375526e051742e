// A room's statistics (GET /api/v1/rooms/ID/statistics, owner and operators): every figure
// labelled and formatted in the page's language, the timeline as a chart (chart.svg) and a
// table, and downloads (JSON, CSV, chart; the recording MP4 and the chat CSV), each fetched with
// the Bearer token and saved from a blob.
import { ApiError, api, downloadFile, el, frame, message, money, saveBlob, token, when } from "../lib/api.js";
import { currentLanguage, t } from "../lib/i18n.js";

const roomId = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `/api/v1/rooms/${encodeURIComponent(roomId)}`;
const main = frame("stats");
const status = el("p", { role: "status", id: "status" });
main.append(el("h1", {}, t("stats"), " · ", roomId), status);
const locale = currentLanguage() === "zh" ? "zh-CN" : "en";
const number = new Intl.NumberFormat(locale);
const percent = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 1 });

// What tests read: the report as the API gave it.
window.shopcast = { stats: null };

/** A duration in seconds as "1 min 5 s" (the page's language). */
function duration(seconds) {
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m ? `${number.format(m)} ${t("minutes_short")} ${s % 60} ${t("seconds")}` : `${number.format(s)} ${t("seconds")}`;
}

function gmv(minor, currency) {
  if (Array.isArray(currency)) return `${number.format(minor / 100)} (${currency.join(", ")})`;
  return money(minor, currency || "USD");
}

const KINDS = {
  count: (v) => number.format(v),
  rate: (v) => (v === null || v === undefined ? t("not_available") : percent.format(v)),
  seconds: (v) => duration(v),
};

// (key in the report, label key, kind) per group.
const AUDIENCE = [["peak_concurrent", "peak_concurrent", "count"], ["unique_viewers", "unique_viewers", "count"],
  ["sessions", "sessions", "count"], ["views", "views", "count"], ["average_watch_time_s", "average_watch_time_s", "seconds"],
  ["chat_messages", "chat_messages", "count"], ["chatters", "chatters", "count"], ["reactions", "reactions_n", "count"],
  ["arrivals", "arrivals_n", "count"], ["shares", "shares_n", "count"]];
const COMMERCE = [["impressions", "impressions", "count"], ["clicks", "clicks", "count"], ["ctr", "ctr", "rate"],
  ["orders", "orders_n", "count"], ["paid_orders", "paid_orders", "count"], ["click_to_order", "click_to_order", "rate"],
  ["gmv_minor", "gmv", "gmv"], ["buyers", "buyers", "count"], ["conversion_rate", "conversion_rate", "rate"],
  ["refunded_orders", "refunded_orders", "count"], ["refund_rate", "refund_rate", "rate"],
  ["returned_orders", "returned_orders", "count"], ["return_rate", "return_rate", "rate"]];

function figure(id, label, value, text) {
  return [el("dt", {}, label), el("dd", { id, dataset: { value: JSON.stringify(value ?? null) } }, text)];
}

function group(section, title, rows, data, currency) {
  return el("section", { class: "stat-group", "aria-label": title }, el("h3", {}, title),
    el("dl", { class: "figures" }, ...rows.filter(([key]) => key in data).map(([key, label, kind]) =>
      figure(`stat-${section}-${key}`, t(label), data[key],
        kind === "gmv" ? gmv(data[key], data.currency || currency) : KINDS[kind](data[key])))));
}

function funnel(f, currency) {
  const a = f.acquisition, act = f.activation;
  return el("section", { class: "stat-group", id: "stat-funnel", "aria-label": t("st_funnel") }, el("h2", {}, t("st_funnel")),
    el("dl", { class: "figures" },
      ...figure("stat-funnel-arrivals", t("acquisition"), a.arrivals,
        `${number.format(a.arrivals)} (${t("from_upcoming")} ${number.format(a.from_upcoming)}, ${t("from_share")} ${number.format(a.from_share)}, ${t("from_direct")} ${number.format(a.from_direct)})`),
      ...figure("stat-funnel-activation", `${t("activation")} ${duration(act.activation_s)}`, act.viewers_past_activation,
        `${number.format(act.viewers_past_activation)} (${KINDS.rate(act.rate)})`),
      ...figure("stat-funnel-retention", t("retention"), f.retention.returning_viewers,
        `${number.format(f.retention.returning_viewers)} (${KINDS.rate(f.retention.rate)})`),
      ...figure("stat-funnel-referral", t("referral"), f.referral.shares, number.format(f.referral.shares)),
      ...figure("stat-funnel-revenue", t("revenue"), f.revenue.gmv_minor,
        `${gmv(f.revenue.gmv_minor, currency)} (${t("paid_orders")}: ${number.format(f.revenue.paid_orders)})`)));
}

function timelineTable(report) {
  const rows = report.timeline || [];
  return el("table", { id: "stats-timeline" },
    el("caption", { class: "muted" }, `${t("st_timeline")} (${duration(report.timeline_bucket_s)})`),
    el("thead", {}, el("tr", {}, ...["bucket", "started_at", "peak_concurrent", "chat_messages", "orders_n"].map((k) => el("th", { scope: "col" }, t(k))))),
    el("tbody", {}, ...rows.map((row, i) => el("tr", {},
      el("td", {}, String(i + 1)), el("td", {}, when(row.start)),
      el("td", {}, number.format(row.viewers)), el("td", {}, number.format(row.chat_messages)), el("td", {}, number.format(row.orders))))));
}

/** The room's host token from its setup (owner and team), for routes that want a token minted
 * for the room (as the host console does); undefined when there is none. */
let roomTokenPromise = null;
function roomToken() {
  roomTokenPromise ??= api("GET", `${base}/setup`).then((s) => s?.publish?.token).catch(() => undefined);
  return roomTokenPromise;
}

/** Save what ``path`` answers as ``filename`` (the account's token, then the room's host token
 * when refused); errors shown beside ``button``. */
async function download(path, filename, button) {
  const note = button.nextElementSibling;
  note.textContent = "";
  try {
    await downloadFile(path, filename, [token(), roomToken]);
  } catch (e) { note.textContent = `${t("error")}: ${e.message}`; note.className = "error"; }
}

function downloadButton(id, label, action) {
  const button = el("button", { type: "button", id, onclick: () => action(button) }, t(label));
  return el("li", {}, button, el("span", { role: "status" }));
}

try {
  const report = await api("GET", `${base}/statistics`);
  window.shopcast.stats = report;
  const currency = report.live.currency;
  main.append(
    el("p", { class: "muted", id: "stats-when" }, `${t("started_at")} ${when(report.started_at)} · ${t("ended_at")} ${when(report.ended_at)} · `,
      `${t("live_length")} `, el("span", { id: "stat-live_length_s", dataset: { value: String(report.live_length_s) } }, duration(report.live_length_s))),
    el("section", { id: "stats-live", class: "stat-section", "aria-label": t("st_live") }, el("h2", {}, t("st_live")),
      group("live", t("st_audience"), AUDIENCE, report.live), group("live", t("st_commerce"), COMMERCE, report.live)),
    funnel(report.funnel, currency),
    el("section", { id: "stats-replay", class: "stat-section", "aria-label": t("st_replay") }, el("h2", {}, t("st_replay")),
      group("replay", t("st_audience"), AUDIENCE, report.replay), group("replay", t("st_commerce"), COMMERCE, report.replay, currency)));
  // The chart needs the same Bearer token, so it is fetched and shown from a blob.
  const chartSection = el("section", { id: "stats-chart-section", "aria-label": t("chart") }, el("h2", {}, t("chart")));
  main.append(chartSection);
  const response = await fetch(`${base}/statistics/chart.svg`, { headers: { authorization: `Bearer ${token()}` } });
  if (response.ok) {
    const url = URL.createObjectURL(await response.blob());
    chartSection.append(el("img", { id: "stats-chart", src: url, alt: `${t("chart")}: ${t("st_timeline")}`, class: "chart" }));
  }
  chartSection.append(timelineTable(report));
  main.append(el("section", { id: "stats-downloads", "aria-label": t("downloads") }, el("h2", {}, t("downloads")),
    el("ul", { class: "downloads" },
      downloadButton("stats-json", "download_json", () => saveBlob(new Blob([JSON.stringify(report, null, 2)], { type: "application/json" }), `stats-${roomId}.json`)),
      downloadButton("stats-csv", "download_csv", (b) => download(`${base}/statistics?format=csv`, `stats-${roomId}.csv`, b)),
      downloadButton("stats-svg", "download_chart", (b) => download(`${base}/statistics/chart.svg`, `stats-${roomId}.svg`, b)),
      downloadButton("recording-mp4", "download_mp4", (b) => download(`${base}/recording.mp4`, `${roomId}.mp4`, b)),
      downloadButton("chat-csv", "download_chat", (b) => download(`${base}/chat?format=csv`, `chat-${roomId}.csv`, b)))),
    el("details", {}, el("summary", {}, "JSON"), el("pre", { id: "stats-json-text" }, JSON.stringify(report, null, 2))));
} catch (e) {
  if (e instanceof ApiError && e.status === 404 && e.field !== "room_id") message(status, t("stats_unavailable"));
  else message(status, `${t("error")}: ${e.message}`, "error");
}
