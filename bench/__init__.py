"""shopcast's benchmark suite: ``shopcast bench [--quick] [--json FILE]``.

Figures are measured side by side in one run and reported with ratios against a
baseline measured in the same run, because absolute times vary between runs.
"""

import argparse
import sys

from shopcast.bench._record import Record, format_table, to_json

__all__ = ["Record", "main"]


def main(argv: list[str]) -> int:
    """Run the benchmarks; print a table to stdout (progress to stderr); return the exit status."""
    parser = argparse.ArgumentParser(prog="shopcast bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small inputs, under a minute")
    parser.add_argument("--json", metavar="FILE", help="also write the records as JSON to FILE")
    arguments = parser.parse_args(argv)
    # Imported here so that `--help` does not pay for numba.
    from shopcast.bench import _micro

    records = _micro.run(arguments.quick, progress=sys.stderr)
    print(format_table(records))
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as output:
            output.write(to_json(records) + "\n")
    return 0
