"""The recording benchmarks run (quick mode) and report every figure with
its unit, and each side-by-side figure with its baseline and their ratio."""

import json
import math

from shopcast import bench


def test_recording_suite_reports_its_figures(tmp_path, capsys):
    target = tmp_path / "bench.json"
    assert bench.main(["--quick", "--suite", "recording", "--json", str(target)]) == 0
    records = {r["name"]: r for r in json.loads(target.read_text())}
    units = {"tap/one-viewer": "frames/s", "tap/one-viewer+recorder": "frames/s",
             "write/plain-file": "MB/s", "write/recorder": "MB/s", "export/fmp4": "media s/s"}
    baselines = {"tap/one-viewer+recorder": "tap/one-viewer", "write/recorder": "write/plain-file"}
    assert {name: r["unit"] for name, r in records.items()} == units
    for name, record in records.items():
        assert record["suite"] == "recording"
        assert isinstance(record["value"], float) and math.isfinite(record["value"]) and record["value"] > 0
        assert record["against"] == baselines.get(name), name
        if name in baselines:
            # The ratio is this figure over its baseline's, as measured in the same run.
            expected = record["value"] / records[baselines[name]]["value"]
            assert math.isclose(record["ratio"], expected, rel_tol=1e-6), (name, record, expected)
        else:
            assert record["ratio"] is None, name
    table = capsys.readouterr().out
    for name, unit in units.items():
        assert any(name in line and unit in line for line in table.splitlines()), name
