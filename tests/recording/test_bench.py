"""The recording benchmarks run (quick mode) and report every figure."""

import json

from shopcast import bench


def test_recording_suite_reports_its_figures(tmp_path, capsys):
    target = tmp_path / "bench.json"
    assert bench.main(["--quick", "--suite", "recording", "--json", str(target)]) == 0
    records = {r["name"]: r for r in json.loads(target.read_text())}
    assert set(records) == {"tap/one-viewer", "tap/one-viewer+recorder", "write/plain-file",
                            "write/recorder", "export/fmp4"}
    assert all(r["value"] > 0 and r["suite"] == "recording" for r in records.values())
    assert records["tap/one-viewer+recorder"]["against"] == "tap/one-viewer"
    assert "export/fmp4" in capsys.readouterr().out
