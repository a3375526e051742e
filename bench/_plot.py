"""Charts of a benchmark run: every compared figure as a bar of its ratio."""

from shopcast.bench._record import Record


def plot(records: list[Record], path: str) -> None:
    """Draw the records that have a ratio as horizontal bars into a PNG at ``path``.

    Raises ImportError when matplotlib is not installed (it is the optional
    ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in records if r.ratio is not None]
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(compared) + 1.5))
    axes.barh([r.name for r in compared], [r.ratio for r in compared], color="#4a7ab5")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("ratio against the figure measured beside it in the same run (log scale)")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
