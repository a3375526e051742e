"""Record: one measured figure, and the table and JSON it is reported as."""

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Record:
    """One figure of a benchmark run."""

    suite: str  #: the suite that measured it ("micro", ...)
    name: str  #: what was measured, e.g. "packetize/video-1080p-fec/numba"
    value: float  #: the figure, in ``unit``
    unit: str  #: "Gbit/s", "packets/s", "s", ...
    against: str | None = None  #: name of the figure measured side by side as the baseline
    ratio: float | None = None  #: this throughput divided by the baseline's (1.0: as fast)


def format_table(records: list[Record]) -> str:
    """The records as an aligned text table."""
    rows = [("suite", "name", "value", "unit", "ratio", "against")]
    for record in records:
        rows.append((
            record.suite, record.name, f"{record.value:,.3f}" if record.value < 100 else f"{record.value:,.0f}",
            record.unit, "" if record.ratio is None else f"{record.ratio:.3f}", record.against or "",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column in (2, 4) else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_json(records: list[Record]) -> str:
    """The records as a JSON list of objects."""
    return json.dumps([dataclasses.asdict(record) for record in records], indent=2)


def percentile(values, q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank rule; -1.0 when empty."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else -1.0
