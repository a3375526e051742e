"""The benchmark framework: records, the table, JSON output and the command line."""

import json

import pytest
from shopcast.bench import Record, _micro
from shopcast.bench._record import format_table
from shopcast.server._cli import main as shopcast_main


def test_table_and_json(tmp_path, capsys, monkeypatch):
    """`shopcast bench` with its flags first (as the README writes it) runs the bench."""
    records = [
        Record("micro", "packetize/x/copy", 50.0, "Gbit/s"),
        Record("micro", "packetize/x/numba", 25.0, "Gbit/s", "packetize/x/copy", 0.5),
    ]
    monkeypatch.setattr(_micro, "run", lambda quick, progress, config: records)
    target = tmp_path / "bench.json"
    assert shopcast_main(["bench", "--quick", "--suite", "micro", "--json", str(target)]) == 0
    output = capsys.readouterr()
    assert "cores" in output.err  # the machine the figures came from
    table = output.out
    assert table == format_table(records) + "\n"
    assert "0.500" in table and "packetize/x/copy" in table
    assert json.loads(target.read_text()) == [
        {"suite": "micro", "name": "packetize/x/copy", "value": 50.0, "unit": "Gbit/s", "against": None,
         "ratio": None},
        {"suite": "micro", "name": "packetize/x/numba", "value": 25.0, "unit": "Gbit/s",
         "against": "packetize/x/copy", "ratio": 0.5},
    ]


def test_help_is_the_bench_s_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        shopcast_main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_a_suite_that_fails_keeps_the_figures_before_it(tmp_path, capsys, monkeypatch):
    from shopcast.bench import _recording

    measured = [Record("micro", "packetize/x/copy", 50.0, "Gbit/s")]
    monkeypatch.setattr(_micro, "run", lambda quick, progress, config: measured)

    def broken(quick, progress, config):
        raise RuntimeError("the recording suite broke")

    monkeypatch.setattr(_recording, "run", broken)
    target = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="recording suite broke"):
        shopcast_main(["bench", "--suite", "micro", "--suite", "recording", "--json", str(target)])
    assert "packetize/x/copy" in capsys.readouterr().out
    assert [r["name"] for r in json.loads(target.read_text())] == ["packetize/x/copy"]


def test_a_bad_config_is_refused_before_any_suite_runs(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(_micro, "run", lambda quick, progress, config: ran.append(1) or [])
    config = tmp_path / "shop.toml"
    config.write_text("[fanout]\nviewers = 3\n")
    assert shopcast_main(["bench", "--suite", "micro", "--config", str(config)]) == 2
    assert "fanout" in capsys.readouterr().err
    assert ran == []


def test_config_media_section_reaches_the_micro_cases(tmp_path):
    config = tmp_path / "shop.toml"
    config.write_text("[media]\ndatagram_payload_bytes = 600\nfec_k = 4\n")
    cases = _micro.cases_for(quick=False, config=str(config))
    assert [c.config().datagram_payload_bytes for c in cases] == [600, 600, 600]
    # FEC cases take the configured k; the case without FEC stays without.
    assert [c.config().fec_k for c in cases] == [4, 0, 4]
    assert [c.config().datagram_payload_bytes for c in _micro.cases_for(quick=False, config=None)] == \
        [1152, 1152, 1152]


def test_fanout_ratios_and_viewers_per_core_follow_from_the_measured_costs():
    from shopcast.bench._fanout import fanout_records

    run = {"packets_per_s": 1000.0, "loss": 0.01, "delay_p50_ms": 5.0, "delay_p99_ms": 9.0,
           "rss_per_subscriber": 2048}
    ours, baseline = {**run, "us_per_packet": 100.0}, {**run, "us_per_packet": 160.0}
    records = {r.name: r for r in fanout_records(10, ours, baseline, {"sendto": 4.0, "gso": 0.5}, 2_000_000)}
    assert records["fanout/10-subs/shopcast-vs-floor"].ratio == 25.0
    assert records["fanout/10-subs/shopcast-vs-floor"].against == "fanout/10-subs/floor/sendto"
    assert records["fanout/10-subs/shopcast-vs-baseline"].ratio == 100.0 / 160.0
    assert records["fanout/10-subs/shopcast-vs-gso"].ratio == 200.0
    # 2 Mbit/s is 2e6 / 8 / 1200 = 208.3 packets a second; a core's million µs at 100 µs each
    # serves 10,000 packets a second, so 48 viewers.
    assert round(records["fanout/10-subs/shopcast/viewers-per-core-at-2mbps"].value, 1) == 48.0
    assert round(records["fanout/10-subs/baseline/viewers-per-core-at-2mbps"].value, 1) == 30.0
    assert records["fanout/10-subs/shopcast/memory-per-subscriber"].value == 2.0
    no_gso = {r.name for r in fanout_records(10, ours, baseline, {"sendto": 4.0}, 4_000_000)}
    assert "fanout/10-subs/shopcast-vs-gso" not in no_gso
    assert "fanout/10-subs/shopcast/viewers-per-core-at-4mbps" in no_gso


def test_latency_ratios_compare_datagram_with_stream_at_the_same_loss():
    from shopcast.bench._latency import _add_ratios
    from shopcast.bench._record import percentile

    assert percentile([], 0.5) == -1.0
    assert percentile([3, 1, 2, 4], 0.5) == 2.0
    assert percentile(list(range(1, 101)), 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    records = [Record("latency", f"latency/{mode}/loss-2pct/delay-{q}", value, "ms")
               for mode, q, value in (("stream", "p50", 10.0), ("stream", "p99", 40.0),
                                      ("datagram", "p50", 5.0), ("datagram", "p99", 10.0))]
    _add_ratios(records)
    ratios = {r.name: (r.ratio, r.against) for r in records if r.ratio is not None}
    assert ratios == {
        "latency/datagram/loss-2pct/p50-vs-stream": (0.5, "latency/stream/loss-2pct/delay-p50"),
        "latency/datagram/loss-2pct/p99-vs-stream": (0.25, "latency/stream/loss-2pct/delay-p99"),
    }


def test_the_chart_puts_costs_and_delays_apart_from_throughputs():
    from shopcast.bench._plot import lower_is_better

    assert lower_is_better(Record("fanout", "fanout/10-subs/shopcast-vs-floor", 30.0, "x cost", "f", 30.0))
    assert lower_is_better(Record("commerce", "flash-sale/latency-p99", 90.0, "ms", "h", 3.0))
    assert not lower_is_better(Record("micro", "packetize/x/numba", 25.0, "Gbit/s", "c", 0.5))
    assert not lower_is_better(Record("commerce", "flash-sale/rate", 300.0, "orders/s", "h", 0.3))


@pytest.mark.parametrize("flags, field", [(["--subscribers", "0"], "--subscribers"),
                                          (["--bitrate-mbps", "-1"], "--bitrate-mbps"),
                                          (["--suite", "nope"], "--suite")])
def test_bad_flags_are_refused_naming_the_flag(flags, field, capsys):
    with pytest.raises(SystemExit) as exit_:
        shopcast_main(["bench", *flags])
    assert exit_.value.code == 2
    assert field in capsys.readouterr().err
