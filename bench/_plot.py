"""Charts of a benchmark run: every compared figure as a bar of its ratio."""

from shopcast.bench._record import Record

# Ratios of figures in these units are costs or delays: below 1 is better. Every other
# ratio is a throughput's: above 1 is better.
LOWER_IS_BETTER_UNITS = ("x cost", "x delay", "ms", "s", "us/packet", "us/delivery")


def lower_is_better(record: Record) -> bool:
    """Whether ``record``'s ratio is a cost or delay (below 1 is better)."""
    return record.unit in LOWER_IS_BETTER_UNITS


def plot(records: list[Record], path: str) -> None:
    """Draw the records that have a ratio as horizontal bars into a PNG at ``path``: one panel
    for throughputs (higher is better), one for costs and delays (lower is better), each bar
    labelled with its figure's name and unit.

    Raises ImportError when matplotlib is not installed (it is the optional
    ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared, seen = [], set()
    for record in records:
        # A figure given in two units (Gbit/s and packets/s) has one ratio: one bar.
        if record.ratio is not None and (record.name, record.ratio) not in seen:
            seen.add((record.name, record.ratio))
            compared.append(record)
    panels = [(title, rows) for title, rows in (
        ("throughput against the figure beside it (higher is better)",
         [r for r in compared if not lower_is_better(r)]),
        ("cost or delay against the figure beside it (lower is better)",
         [r for r in compared if lower_is_better(r)]),
    ) if rows]
    if not panels:
        return
    heights = [0.35 * len(rows) + 1.2 for _, rows in panels]
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(11, sum(heights)),
                                     gridspec_kw={"height_ratios": heights}, squeeze=False)
    for (title, rows), (axes,) in zip(panels, axes_list, strict=True):
        labels = [r.name if r.unit.startswith("x ") else f"{r.name} ({r.unit})" for r in rows]
        axes.barh(range(len(rows)), [r.ratio for r in rows], color="#4a7ab5")
        axes.set_yticks(range(len(rows)), labels, fontsize=8)
        axes.axvline(1.0, color="black", linewidth=0.8)
        axes.set_xscale("log")
        axes.set_title(title, fontsize=10)
        axes.invert_yaxis()
    axes_list[-1][0].set_xlabel("ratio, log scale (1 = the same as the figure measured beside it)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
