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
    arguments = parser.parse_args(argv)
    suites = arguments.suite or list(SUITES)
    records: list[Record] = []
    # Imported here so that `--help` does not pay for numba.
    if "micro" in suites:
        from shopcast.bench import _micro
        records += _micro.run(arguments.quick, progress=sys.stderr)
    if "fanout" in suites:
        from shopcast.bench import _fanout
        records += _fanout.run(arguments.quick, progress=sys.stderr, config=arguments.config)
    if "latency" in suites:
        from shopcast.bench import _latency, _rtmp_latency
        records += _latency.run(arguments.quick, progress=sys.stderr, config=arguments.config)
        records += _rtmp_latency.run(arguments.quick, progress=sys.stderr, config=arguments.config)
    if "chat" in suites:
        from shopcast.bench import _chat
        records += _chat.run(arguments.quick, progress=sys.stderr, config=arguments.config)
    if "commerce" in suites:
        from shopcast.bench import _commerce
        records += _commerce.run(arguments.quick, progress=sys.stderr, config=arguments.config)
    if "recording" in suites:
        from shopcast.bench import _recording
        records += _recording.run(arguments.quick, progress=sys.stderr)
    if "glass" in suites:
        from shopcast.bench import _glass
        records += _glass.run(arguments.quick, progress=sys.stderr, config=arguments.config)
    print(format_table(records))
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as output:
            output.write(to_json(records) + "\n")
    if arguments.plot:
        from shopcast.bench._plot import plot
        try:
            plot(records, arguments.plot)
        except ImportError:
            print("shopcast bench: --plot needs matplotlib (pip install 'shopcast[plot]')",
                  file=sys.stderr)
            return 2
    return 0
