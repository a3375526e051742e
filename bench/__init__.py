"""shopcast's benchmark suite: ``shopcast bench [--quick] [--json FILE] [--plot FILE] [--config FILE]``.

Figures are measured side by side in one run and reported with ratios against a
baseline measured in the same run, because absolute times vary between runs.
"""

import argparse
import sys

from shopcast.bench._record import Record, format_table, to_json

__all__ = ["Record", "main"]

SUITES = ("micro", "fanout", "latency", "chat", "commerce", "recording")
# Run only when named with --suite: slow, and needing Chromium and tests/web/node_modules.
OPTIONAL_SUITES = ("glass",)


def main(argv: list[str]) -> int:
    """Run the benchmarks; print a table to stdout (progress to stderr); return the exit status."""
    parser = argparse.ArgumentParser(prog="shopcast bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small inputs, under a minute; checks the suite works, not speed")
    parser.add_argument("--json", metavar="FILE", help="also write the records as JSON to FILE")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the compared figures as a PNG chart (needs matplotlib)")
    parser.add_argument("--config", metavar="FILE",
                        help="run the server under this configuration, to compare settings")
    parser.add_argument("--suite", action="append", choices=SUITES + OPTIONAL_SUITES,
                        help="run only this suite (repeatable); default: all but "
                             + ", ".join(OPTIONAL_SUITES))
    parser.add_argument("--subscribers", action="append", type=_positive_int, metavar="N",
                        help="fan-out: subscribers per run (repeatable; default 10 and 50, 10 with --quick)")
    parser.add_argument("--bitrate-mbps", type=_positive_float, default=2.0, metavar="MBPS",
                        help="fan-out and latency: each viewer's bitrate in Mbit/s (default 2)")
    arguments = parser.parse_args(argv)
    if arguments.config:
        # Refused here, before minutes of other suites, with the message `shopcast serve` gives.
        from shopcast.server._config import ConfigError, load_config
        try:
            load_config(arguments.config)
        except ConfigError as exc:
            print(f"shopcast bench: configuration error: {exc}", file=sys.stderr)
            return 2
    if arguments.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("shopcast bench: --plot needs matplotlib (pip install 'shopcast[plot]')",
                  file=sys.stderr)
            return 2
    suites = arguments.suite or list(SUITES)
    print(f"bench: {machine_description()}", file=sys.stderr)
    records: list[Record] = []
    try:
        for suite in suites:
            records += _run_suite(suite, arguments)
            if arguments.json:  # rewritten after each suite, so a failure later keeps these
                _write_json(arguments.json, records)
    finally:
        # Whatever was measured is printed, even when a later suite failed.
        print(format_table(records))
        if arguments.json:
            _write_json(arguments.json, records)
    if arguments.plot:
        from shopcast.bench._plot import plot
        plot(records, arguments.plot)
    return 0


def _write_json(path: str, records: list[Record]) -> None:
    with open(path, "w", encoding="utf-8") as output:
        output.write(to_json(records) + "\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError("must be from 1 to 10000")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be from 0.01 to 1000")
    return value


def _run_suite(suite: str, arguments: argparse.Namespace) -> list[Record]:
    quick, config = arguments.quick, arguments.config
    bitrate_bps = int(arguments.bitrate_mbps * 1_000_000)
    # Imported here so that `--help` does not pay for numba.
    if suite == "micro":
        from shopcast.bench import _micro
        return _micro.run(quick, progress=sys.stderr, config=config)
    if suite == "fanout":
        from shopcast.bench import _fanout
        return _fanout.run(quick, progress=sys.stderr, config=config, bitrate_bps=bitrate_bps,
                           subscriber_counts=tuple(arguments.subscribers or ()) or None)
    if suite == "latency":
        from shopcast.bench import _latency, _rtmp_latency
        return (_latency.run(quick, progress=sys.stderr, config=config, bitrate_bps=bitrate_bps)
                + _rtmp_latency.run(quick, progress=sys.stderr, config=config))
    if suite == "chat":
        from shopcast.bench import _chat
        return _chat.run(quick, progress=sys.stderr, config=config)
    if suite == "commerce":
        from shopcast.bench import _commerce
        return _commerce.run(quick, progress=sys.stderr, config=config)
    if suite == "recording":
        from shopcast.bench import _recording
        return _recording.run(quick, progress=sys.stderr, config=config)
    from shopcast.bench import _glass
    return _glass.run(quick, progress=sys.stderr, config=config)


def machine_description() -> str:
    """The machine a run measured: CPU model and cores, memory, kernel, Python and the libraries
    on the hot path, so that committed results say where they came from."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    libraries = []
    for name in ("aioquic", "numba", "numpy", "trio"):
        try:
            libraries.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return (f"{cpu}, {os.cpu_count()} cores{memory}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; " + ", ".join(libraries))
