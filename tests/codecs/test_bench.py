"""The benchmark framework: records, the table, JSON output and the command line."""

import json

from shopcast import bench
from shopcast.bench import Record, _micro
from shopcast.bench._record import format_table


def test_table_and_json(tmp_path, capsys, monkeypatch):
    records = [
        Record("micro", "packetize/x/copy", 50.0, "Gbit/s"),
        Record("micro", "packetize/x/numba", 25.0, "Gbit/s", "packetize/x/copy", 0.5),
    ]
    monkeypatch.setattr(_micro, "run", lambda quick, progress: records)
    target = tmp_path / "bench.json"
    assert bench.main(["--quick", "--suite", "micro", "--json", str(target)]) == 0
    table = capsys.readouterr().out
    assert table == format_table(records) + "\n"
    assert "0.500" in table and "packetize/x/copy" in table
    assert json.loads(target.read_text()) == [
        {"suite": "micro", "name": "packetize/x/copy", "value": 50.0, "unit": "Gbit/s", "against": None,
         "ratio": None},
        {"suite": "micro", "name": "packetize/x/numba", "value": 25.0, "unit": "Gbit/s",
         "against": "packetize/x/copy", "ratio": 0.5},
    ]
