"""The statistics plugin (ISO IWA 41 §5.5): the report of every live, from
viewer sessions, chat, page events (card impressions and clicks, shares,
arrivals) and orders; as JSON, CSV and a chart (SVG, and PNG with matplotlib).

Everything it counts is an event row (``stat_events``) written on coarse
events only: a viewer session opening or closing, one page event, an order
changing state, and chat read from the rooms' transcripts in batches every
``chat_poll_interval_s``. The report is computed from the rows on request by
``compute_statistics``, a pure function, so a scripted session can be checked
against figures computed by hand.

Definitions (the README repeats them):

- A viewer is a token subject: ``guest:<id>`` for a guest's viewer token
  (one browser), ``account:<id>`` for an account; only a viewer with
  neither is counted by address. Page events name their viewer the same
  way (the Bearer token's subject; else ``viewer``, a guest id).
- A session is a join and the next leave of the same viewer (in order); one
  still open ends at the live's end (replay: now). Live sessions are clipped
  to the live window; replay sessions are counted apart, and so are page
  events flagged ``replay`` or made after the live ended.
- Chat messages: those shown in the chat (visible, or deleted later); a
  message held for review counts once approved, never while held or when
  rejected.
- views: sessions of at least ``view_min_s``; average watch time: each unique
  viewer's total time, capped at the live's length, averaged over viewers.
- CTR = clicks / impressions; click-to-order = orders placed / clicks;
  conversion = paying buyers who watched / unique viewers (so at most 1;
  ``buyers`` counts every paying buyer, watching or not); refund rate and
  return rate = refunded (returned) orders / paid orders; GMV = the totals
  of paid orders. Orders placed after the live ended are replay orders.
- AARRR: acquisition = arrivals by source (upcoming, share, direct);
  activation = unique viewers who watched ``activation_s`` or more;
  retention = viewers who had watched an earlier room of the same host;
  referral = shares; revenue = GMV.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from shopcast.plugins._accounts import subject_digest
from shopcast.plugins._api import EVERYONE, Api, Query, format_time
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._recordings import may_manage_room
from shopcast.plugins._storage import Migration
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Response

__all__ = ["EventRow", "StatisticsPlugin", "compute_statistics", "render_svg", "viewer_identity"]

log = get_logger("statistics")

EVENT_TYPES = ("impression", "click", "share", "arrival")
SHOWN_CHAT = ("visible", "deleted")
"""Transcript statuses of messages that were shown in the chat."""
SOURCES = ("upcoming", "share", "direct")

MIGRATIONS = [
    Migration("statistics", 1, """
CREATE TABLE stat_events (
    id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    replay INTEGER NOT NULL,
    pin_id TEXT,
    product_id TEXT,
    source TEXT,
    order_id TEXT,
    amount_minor INTEGER,
    currency TEXT,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX stat_events_room ON stat_events(room_id, at);
CREATE INDEX stat_events_subject ON stat_events(subject);
CREATE TABLE stat_chat_seen (
    room_id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL
);
"""),
]


@dataclass(frozen=True)
class EventRow:
    """One counted event (a row of ``stat_events``)."""

    at: float
    """Unix seconds."""
    kind: str
    """join, leave, impression, click, share, arrival, chat, reaction,
    order_placed, order_paid, and order_refunded / order_returned (from order status changes)."""
    subject: str = ""
    replay: bool = False
    pin_id: str | None = None
    product_id: str | None = None
    source: str | None = None
    order_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    count: int = 1


@dataclass
class _Session:
    subject: str
    start: float
    end: float


PAGE_EVENTS = frozenset(EVENT_TYPES)


def viewer_identity(subject: str) -> str:
    """The one name of a viewer however it was reported: the relay's
    ``account:<token subject>`` of a guest's token and a page event's
    ``viewer`` field both become ``guest:<id>``; accounts stay ``account:<id>``."""
    for prefix in ("account:guest:", "viewer:guest:", "viewer:"):
        if subject.startswith(prefix):
            return "guest:" + subject[len(prefix):]
    return subject


def _rate(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _sessions(events: list[EventRow], replay: bool, open_end: float) -> list[_Session]:
    """Joins paired with the next leave of the same viewer, in order."""
    opened: dict[str, list[float]] = {}
    sessions: list[_Session] = []
    for event in events:
        if event.replay != replay:
            continue
        if event.kind == "join":
            opened.setdefault(event.subject, []).append(event.at)
        elif event.kind == "leave" and opened.get(event.subject):
            sessions.append(_Session(event.subject, opened[event.subject].pop(0), event.at))
    for subject, starts in opened.items():
        sessions.extend(_Session(subject, start, max(start, open_end)) for start in starts)
    return sessions


def _peak(sessions: list[_Session], lo: float, hi: float) -> int:
    """Most sessions open at once within [lo, hi)."""
    points = []
    for s in sessions:
        start, end = max(s.start, lo), min(s.end, hi)
        if end > start or (s.start == s.end and lo <= s.start < hi):
            points.append((start, 1))
            points.append((max(start, end), -1))
    peak = current = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        current += delta
        peak = max(peak, current)
    return peak


def compute_statistics(events: list[EventRow], *, started_at: float | None, ended_at: float | None,
                       now: float, view_min_s: float, activation_s: float, bucket_s: int,
                       max_buckets: int, returning: set[str] | None = None) -> dict[str, Any]:
    """The report of one room from its events (sorted by time); see the module docstring."""
    # A page event after the live ended was made on the replay, whatever the page said.
    events = sorted((replace(e, subject=viewer_identity(e.subject),
                             replay=e.replay or (e.kind in PAGE_EVENTS and ended_at is not None
                                                 and e.at > ended_at))
                     for e in events), key=lambda e: e.at)
    returning = {viewer_identity(s) for s in returning or ()}
    live_end = ended_at if ended_at is not None else now
    live_start = started_at if started_at is not None else live_end
    live_length = max(0.0, live_end - live_start)

    live_sessions = []
    for s in _sessions(events, False, live_end):
        start, end = max(s.start, live_start), min(s.end, live_end)
        if started_at is not None and end >= start:
            live_sessions.append(_Session(s.subject, start, end))
    watch: dict[str, float] = {}
    for s in live_sessions:
        watch[s.subject] = watch.get(s.subject, 0.0) + (s.end - s.start)
    capped = {k: min(v, live_length) for k, v in watch.items()}
    unique = len(watch)

    def orders(kind: str, replay: bool) -> list[EventRow]:
        placed_after = {e.order_id for e in events if e.kind == "order_placed"
                        and ended_at is not None and e.at > ended_at}
        return [e for e in events if e.kind == kind and (e.order_id in placed_after) == replay]

    def commerce(replay: bool, viewers: set[str]) -> dict[str, Any]:
        impressions = sum(e.count for e in events if e.kind == "impression" and e.replay == replay)
        clicks = sum(e.count for e in events if e.kind == "click" and e.replay == replay)
        placed = orders("order_placed", replay)
        paid = orders("order_paid", replay)
        refunded = orders("order_refunded", replay)
        returned = orders("order_returned", replay)
        currencies = sorted({e.currency for e in paid if e.currency})
        buyers = {e.subject for e in paid if e.subject}
        return {
            "impressions": impressions, "clicks": clicks, "ctr": _rate(clicks, impressions),
            "orders": len(placed), "paid_orders": len(paid),
            "click_to_order": _rate(len(placed), clicks),
            "gmv_minor": sum(e.amount_minor or 0 for e in paid),
            "currency": currencies[0] if len(currencies) == 1 else (currencies or None),
            "buyers": len(buyers), "conversion_rate": _rate(len(buyers & viewers), len(viewers)),
            "refunded_orders": len(refunded), "returned_orders": len(returned),
            "refund_rate": _rate(len(refunded), len(paid)),
            "return_rate": _rate(len(returned), len(paid)),
        }

    chat = [e for e in events if e.kind == "chat"]
    live = {
        "peak_concurrent": _peak(live_sessions, live_start, live_end + 1e-9),
        "unique_viewers": unique,
        "sessions": len(live_sessions),
        "views": sum(1 for s in live_sessions if s.end - s.start >= view_min_s),
        "average_watch_time_s": round(sum(capped.values()) / unique, 3) if unique else 0.0,
        "chat_messages": sum(e.count for e in chat),
        "chatters": len({e.subject for e in chat}),
        "reactions": sum(e.count for e in events if e.kind == "reaction"),
        **commerce(False, set(watch)),
    }
    activated = sum(1 for v in watch.values() if v >= activation_s)
    arrivals = {source: sum(e.count for e in events if e.kind == "arrival" and not e.replay
                            and (e.source or "direct") == source) for source in SOURCES}
    funnel = {
        "acquisition": {"arrivals": sum(arrivals.values()), **{f"from_{k}": v for k, v in arrivals.items()}},
        "activation": {"viewers_past_activation": activated, "activation_s": activation_s,
                       "rate": _rate(activated, unique)},
        "retention": {"returning_viewers": len(set(watch) & returning),
                      "rate": _rate(len(set(watch) & returning), unique)},
        "referral": {"shares": sum(e.count for e in events if e.kind == "share" and not e.replay)},
        "revenue": {"gmv_minor": live["gmv_minor"], "paid_orders": live["paid_orders"]},
    }
    replay_sessions = _sessions(events, True, now)
    replay_watch: dict[str, float] = {}
    for s in replay_sessions:
        replay_watch[s.subject] = replay_watch.get(s.subject, 0.0) + (s.end - s.start)
    replay = {
        "unique_viewers": len(replay_watch),
        "sessions": len(replay_sessions),
        "views": sum(1 for s in replay_sessions if s.end - s.start >= view_min_s),
        "average_watch_time_s": round(sum(replay_watch.values()) / len(replay_watch), 3)
        if replay_watch else 0.0,
        "arrivals": sum(e.count for e in events if e.kind == "arrival" and e.replay),
        "shares": sum(e.count for e in events if e.kind == "share" and e.replay),
        **commerce(True, set(replay_watch)),
    }
    timeline = []
    if started_at is not None:
        buckets = min(max_buckets, max(1, math.ceil(live_length / bucket_s)))
        for n in range(buckets):
            lo, hi = live_start + n * bucket_s, live_start + (n + 1) * bucket_s
            last = n == buckets - 1
            timeline.append({
                "minute" if bucket_s == 60 else "bucket": n, "start": format_time(lo),
                "viewers": _peak(live_sessions, lo, hi if not last else max(hi, live_end + 1e-9)),
                "chat_messages": sum(e.count for e in chat if lo <= e.at < hi or (last and e.at >= hi)),
                "orders": sum(1 for e in events if e.kind == "order_placed"
                              and (lo <= e.at < hi or (last and hi <= e.at <= live_end))),
            })
    return {"started_at": format_time(started_at), "ended_at": format_time(ended_at),
            "live_length_s": round(live_length, 3), "live": live, "funnel": funnel,
            "replay": replay, "timeline_bucket_s": bucket_s, "timeline": timeline}


def render_svg(report: dict[str, Any], *, title: str) -> str:
    """The timeline as a hand-written SVG line chart: viewers, chat, orders."""
    width, height, left, right, top, bottom = 720, 320, 48, 16, 36, 40
    timeline = report["timeline"]
    series = [("viewers", "#1f77b4"), ("chat_messages", "#2ca02c"), ("orders", "#d62728")]
    peak = max([1] + [row[name] for row in timeline for name, _ in series])
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(timeline) - 1)

    def xy(i: int, value: float) -> str:
        return f"{left + plot_w * i / n:.1f},{top + plot_h * (1 - value / peak):.1f}"

    esc = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
    safe_title = "".join(esc.get(c, c) for c in title)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<title>{safe_title}</title>', '<rect width="100%" height="100%" fill="#fff"/>',
             f'<text x="{left}" y="20" font-size="14">{safe_title}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
             f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">0</text>',
             f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">'
             f'{len(timeline)} x {report["timeline_bucket_s"]} s</text>']
    for k, (name, color) in enumerate(series):
        points = " ".join(xy(i, row[name]) for i, row in enumerate(timeline))
        if len(timeline) == 1:
            points = f"{xy(0, timeline[0][name])} {left + plot_w:.1f},{xy(0, timeline[0][name]).split(',')[1]}"
        if points:
            parts.append(f'<polyline class="{name}" fill="none" stroke="{color}" stroke-width="2" '
                         f'points="{points}"/>')
        parts.append(f'<text x="{left + 8 + 130 * k}" y="{height - 8}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_png(report: dict[str, Any], *, title: str) -> bytes | None:
    """The same chart as PNG, or None when matplotlib (the ``plot`` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timeline = report["timeline"]
    figure, axes = plt.subplots(figsize=(7.2, 3.2), dpi=100)
    x = list(range(len(timeline)))
    for name in ("viewers", "chat_messages", "orders"):
        axes.plot(x, [row[name] for row in timeline], label=name)
    axes.set_title(title)
    axes.set_xlabel(f"x {report['timeline_bucket_s']} s")
    axes.legend()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: ``section,metric,value`` rows, then the timeline."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "metric", "value"])
    for section in ("live", "replay"):
        for key, value in report[section].items():
            writer.writerow([section, key, "" if value is None else value])
    for stage, values in report["funnel"].items():
        for key, value in values.items():
            writer.writerow([f"funnel.{stage}", key, "" if value is None else value])
    writer.writerow([])
    columns = [c for c in (report["timeline"][0] if report["timeline"] else {})]
    if columns:
        writer.writerow(columns)
        for row in report["timeline"]:
            writer.writerow([row[c] for c in columns])
    return out.getvalue()


def _order_buyer(c: sqlite3.Connection, order_id: str) -> str:
    """The buyer of an order from the commerce plugin's table, when the
    hook's order does not name one ('' without that table)."""
    if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'orders'").fetchone() is None:
        return ""
    row = c.execute("SELECT buyer_id FROM orders WHERE id = ?", (order_id,)).fetchone()
    return row[0] if row else ""


class StatisticsPlugin:
    """Counts events and serves the report; see the module docstring."""

    requires = ("rooms",)

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.db: Any = None
        self.clock = time.time
        self._chat_lock = trio.Lock()
        self._reactions_counted: dict[str, int] = {}
        self._held: dict[str, set[int]] = {}
        """Per room, messages seen held for review: counted when approved."""
        self.stored = trio.Event()
        """Set (and replaced) after events are stored: tests wait on it."""

    # --- hooks ------------------------------------------------------------------------------

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.cfg = app.config.statistics

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    async def shopcast_startup(self, app: Any, nursery: trio.Nursery) -> None:
        self.db = app.db
        nursery.start_soon(self._poll_chat_forever)

    @hookimpl
    async def shopcast_viewer_joined(self, room_id: str, subject: str, replay: bool) -> None:
        await self.add(room_id, EventRow(self.clock(), "join", viewer_identity(subject), replay))

    @hookimpl
    async def shopcast_viewer_left(self, room_id: str, subject: str, replay: bool) -> None:
        await self.add(room_id, EventRow(self.clock(), "leave", viewer_identity(subject), replay))

    @hookimpl
    async def shopcast_order_placed(self, order: dict[str, Any]) -> None:
        await self._order("order_placed", order)

    @hookimpl
    async def shopcast_order_paid(self, order: dict[str, Any]) -> None:
        await self._order("order_paid", order)

    @hookimpl
    async def shopcast_order_updated(self, order: dict[str, Any], previous: str) -> None:
        # Refunds and returns arrive as status changes of the order.
        status = order.get("status")
        if status in ("refunded", "returned") and previous != status:
            await self._order(f"order_{status}", order)

    @hookimpl
    async def shopcast_room_ended(self, room: dict[str, Any], reason: str) -> None:
        await self.poll_chat()

    @hookimpl
    async def shopcast_account_forget(self, account_id: str) -> None:
        digest = subject_digest(account_id)
        await self.db.write(lambda c: c.execute(
            "UPDATE stat_events SET subject = ? WHERE subject IN (?, ?)",
            (digest, account_id, f"account:{account_id}")))

    async def _order(self, kind: str, order: dict[str, Any]) -> None:
        room_id = order.get("room_id")
        if not room_id:
            return
        buyer = order.get("buyer_id") or order.get("account_id") or order.get("buyer") or ""
        if not buyer and order.get("id"):
            buyer = await self.db.read(lambda c: _order_buyer(c, str(order["id"])))
        amount = order.get("total_minor", order.get("total"))
        await self.add(room_id, EventRow(self.clock(), kind, f"account:{buyer}" if buyer else "",
                                         order_id=str(order.get("id", "")),
                                         amount_minor=amount if isinstance(amount, int) else None,
                                         currency=order.get("currency"), pin_id=order.get("pin_id"),
                                         product_id=order.get("product_id")))

    async def add(self, room_id: str, *rows: EventRow) -> None:
        """Store events of ``room_id``."""
        values = [(room_id, r.at, r.kind, r.subject, int(r.replay), r.pin_id, r.product_id, r.source,
                   r.order_id, r.amount_minor, r.currency, r.count) for r in rows]
        await self.db.write(lambda c: c.executemany(
            "INSERT INTO stat_events (room_id, at, kind, subject, replay, pin_id, product_id, source, "
            "order_id, amount_minor, currency, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values))
        self.stored.set()
        self.stored = trio.Event()

    # --- chat, read in batches ---------------------------------------------------------------

    async def _poll_chat_forever(self) -> None:
        while True:
            await trio.sleep(self.cfg.chat_poll_interval_s)
            try:
                await self.poll_chat()
            except Exception:
                log.error("chat_poll_failed", exc_info=True)

    async def poll_chat(self) -> None:
        """Store the chat messages and reactions every room got since the last poll."""
        async with self._chat_lock:
            interaction = self.app.interaction
            seen = dict(await self.db.read(lambda c: c.execute(
                "SELECT room_id, message_id FROM stat_chat_seen").fetchall()))
            now = self.clock()
            for room_id, room in list(interaction.rooms.items()):
                last = seen.get(room_id, 0)
                held = self._held.setdefault(room_id, set())
                transcript = room.transcript()
                rows = []
                for m, status in transcript:
                    if m.id <= last and m.id not in held:
                        continue
                    if status == "held":
                        held.add(m.id)
                        continue
                    held.discard(m.id)
                    if status in SHOWN_CHAT:
                        rows.append(EventRow(m.server_time_s, "chat",
                                             viewer_identity(f"account:{m.author_id}")))
                # A held message that left the transcript (its bound) was never shown.
                held &= {m.id for m, _ in transcript}
                newest = max([last] + [m.id for m, _ in transcript])
                reactions = sum(room.reactions_total.values())
                counted = self._reactions_counted.get(room_id, 0)
                if reactions > counted:
                    rows.append(EventRow(now, "reaction", count=reactions - counted))
                    self._reactions_counted[room_id] = reactions
                if not rows and newest == last:
                    continue
                await self.add(room_id, *rows)
                await self.db.write(lambda c, r=room_id, n=newest: c.execute(
                    "INSERT INTO stat_chat_seen VALUES (?, ?) ON CONFLICT (room_id) "
                    "DO UPDATE SET message_id = excluded.message_id", (r, n)))

    # --- routes -----------------------------------------------------------------------------

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        cfg = self.cfg
        text = {"type": "string", "minLength": 1, "maxLength": cfg.max_field_chars}
        event = {"type": "object", "additionalProperties": False, "required": ["type"],
                 "properties": {"type": {"type": "string", "enum": list(EVENT_TYPES)},
                                "pin_id": text, "product_id": text,
                                "source": {"type": "string", "enum": list(SOURCES)},
                                "replay": {"type": "boolean"}, "viewer": text}}
        error = {"$ref": "#/components/schemas/Error"}
        tag = "statistics"
        api.route("POST", "/api/v1/rooms/{room_id}/events", self.post_event, name="statistics_event",
                  tag=tag, roles=EVERYONE, request=event,
                  example={"type": "click", "pin_id": "p1", "product_id": "shoe-1"},
                  summary="Count a page event: a card impression or click, a share, an arrival.",
                  responses={204: ("Counted.", None), 404: ("No such room.", error),
                             429: ("Too many events from this viewer in this room.", error)})
        fmt = Query("format", {"type": "string", "enum": ["json", "csv"]}, "json (default) or csv")
        api.route("GET", "/api/v1/rooms/{room_id}/statistics", self.statistics, name="statistics",
                  tag=tag, roles=("host", "operator", "service"), query=[fmt],
                  summary="The room's statistics (owner and operators).",
                  responses={200: ("The report.", {"type": "object"})})
        api.route("GET", "/api/v1/rooms/{room_id}/statistics/chart.svg", self.chart_svg,
                  name="statistics_chart_svg", tag=tag, roles=("host", "operator", "service"),
                  content_type="image/svg+xml", summary="The timeline chart as SVG.",
                  responses={200: ("The chart.", None)})
        api.route("GET", "/api/v1/rooms/{room_id}/statistics/chart.png", self.chart_png,
                  name="statistics_chart_png", tag=tag, roles=("host", "operator", "service"),
                  content_type="image/png", summary="The timeline chart as PNG (needs matplotlib).",
                  responses={200: ("The chart.", None),
                             404: ("matplotlib (the plot extra) is not installed.", error)})

    async def post_event(self, request, claims, body, query, room_id: str) -> Response:
        await self.plugins.get("rooms").get(room_id)
        if claims is not None:
            subject = viewer_identity(f"account:{claims.subject}")
        elif body.get("viewer"):
            subject = viewer_identity(f"viewer:{body['viewer']}")
        else:
            subject = f"address:{request.client[0] if request.client else ''}"
        limit = self.cfg.events_per_viewer_per_room_max
        count = await self.db.read(lambda c: c.execute(
            "SELECT count(*) FROM stat_events WHERE room_id = ? AND subject = ? AND kind IN "
            "('impression', 'click', 'share', 'arrival')", (room_id, subject)).fetchone()[0])
        if count >= limit:
            raise HTTPError(429, "too_many_events", f"at most {limit} events per viewer and room "
                            "(statistics.events_per_viewer_per_room_max)", "type")
        source = body.get("source") if body["type"] == "arrival" else None
        await self.add(room_id, EventRow(self.clock(), body["type"], subject, bool(body.get("replay")),
                                         pin_id=body.get("pin_id"), product_id=body.get("product_id"),
                                         source=source or ("direct" if body["type"] == "arrival" else None)))
        return Response(204)

    async def report(self, room_id: str) -> dict[str, Any]:
        """The statistics of ``room_id`` now."""
        room = await self.plugins.get("rooms").get(room_id)
        if room_id in self.app.interaction.rooms:
            await self.poll_chat()

        def load(c: sqlite3.Connection) -> tuple[list[EventRow], set[str]]:
            rows = c.execute("SELECT at, kind, subject, replay, pin_id, product_id, source, order_id, "
                             "amount_minor, currency, count FROM stat_events WHERE room_id = ? "
                             "ORDER BY at, id", (room_id,)).fetchall()
            events = [EventRow(r[0], r[1], r[2], bool(r[3]), *r[4:]) for r in rows]
            returning = {r[0] for r in c.execute(
                "SELECT DISTINCT e.subject FROM stat_events e JOIN rooms r ON r.id = e.room_id "
                "WHERE e.kind = 'join' AND e.replay = 0 AND r.owner_id = ? AND e.room_id != ? "
                "AND e.at < ?", (room["owner_id"], room_id, room["started_at"] or 0))}
            return events, returning

        events, returning = await self.db.read(load)
        cfg = self.cfg
        report = compute_statistics(events, started_at=room["started_at"], ended_at=room["ended_at"],
                                    now=self.clock(), view_min_s=cfg.view_min_s,
                                    activation_s=cfg.activation_s, bucket_s=cfg.timeline_bucket_s,
                                    max_buckets=cfg.max_timeline_buckets, returning=returning)
        return {"room_id": room_id, "title": room["title"], "state": room["state"], **report}

    async def statistics(self, request, claims, body, query, room_id: str) -> Response:
        await may_manage_room(self.plugins, claims, room_id)
        report = await self.report(room_id)
        if query.get("format", "json") == "csv":
            return Response(200, (("content-type", "text/csv; charset=utf-8"),
                                  ("content-disposition", f'attachment; filename="stats-{room_id}.csv"')),
                            report_csv(report).encode("utf-8"))
        return Response.json(report)

    async def chart_svg(self, request, claims, body, query, room_id: str) -> Response:
        await may_manage_room(self.plugins, claims, room_id)
        report = await self.report(room_id)
        return Response.text(render_svg(report, title=report["title"]), content_type="image/svg+xml")

    async def chart_png(self, request, claims, body, query, room_id: str) -> Response:
        await may_manage_room(self.plugins, claims, room_id)
        report = await self.report(room_id)
        png = await trio.to_thread.run_sync(lambda: render_png(report, title=report["title"]))
        if png is None:
            raise HTTPError(404, "no_matplotlib", "PNG charts need matplotlib (pip install "
                            "shopcast[plot]); chart.svg needs nothing", "format")
        return Response(200, (("content-type", "image/png"),), png)
