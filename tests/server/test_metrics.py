"""The Prometheus registry: text exposition format 0.0.4, labels, histograms, callbacks."""

import pytest

from shopcast.server._metrics import CONTENT_TYPE, Registry


def test_counter_and_gauge_render_with_help_and_type() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests.\nSecond line \\ here.", ("route",))
    requests.labels("a").inc()
    requests.labels("a").inc(2)
    requests.labels('q"\\\n').inc()
    gauge = registry.gauge("app_open", "Open things.")
    gauge.set(5)
    gauge.dec()
    assert registry.render() == (
        "# HELP app_requests_total Requests.\\nSecond line \\\\ here.\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{route="a"} 3\n'
        'app_requests_total{route="q\\"\\\\\\n"} 1\n'
        "# HELP app_open Open things.\n"
        "# TYPE app_open gauge\n"
        "app_open 4\n"
    )
    assert requests.value("a") == 3
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = Registry()
    latency = registry.histogram("app_latency_seconds", "Latency.", ("route",), buckets=[0.1, 1.0])
    child = latency.labels("x")
    for value in (0.05, 0.1, 0.5, 7.0):
        child.observe(value)
    lines = registry.render().splitlines()
    assert lines[2:] == [
        'app_latency_seconds_bucket{route="x",le="0.1"} 2',
        'app_latency_seconds_bucket{route="x",le="1"} 3',
        'app_latency_seconds_bucket{route="x",le="+Inf"} 4',
        'app_latency_seconds_sum{route="x"} 7.65',
        'app_latency_seconds_count{route="x"} 4',
    ]


def test_gauge_callbacks_are_evaluated_at_render_time() -> None:
    registry = Registry()
    state = {"open": 1}
    registry.gauge("app_sessions", "Sessions.", callback=lambda: state["open"])
    registry.gauge("app_rooms", "Rooms by state.", ("state",), callback=lambda: {("live",): 2, ("ended",): 0.5})
    state["open"] = 3
    text = registry.render()
    assert "app_sessions 3\n" in text
    assert 'app_rooms{state="live"} 2\n' in text
    assert 'app_rooms{state="ended"} 0.5\n' in text


def test_registration_is_idempotent_but_rejects_clashes() -> None:
    registry = Registry()
    counter = registry.counter("app_total", "Things.", ("kind",))
    assert registry.counter("app_total", "Things.", ("kind",)) is counter
    with pytest.raises(ValueError):
        registry.counter("app_total", "Things.", ("other",))
    with pytest.raises(ValueError):
        registry.gauge("app_total", "Things.", ("kind",))
    registry.histogram("app_seconds", "Time.", buckets=[1.0])
    with pytest.raises(ValueError):
        registry.histogram("app_seconds", "Time.", buckets=[2.0])
    registry.gauge("app_cb", "Callback.", callback=lambda: 1)
    with pytest.raises(ValueError):
        registry.gauge("app_cb", "Callback.", callback=lambda: 2)


@pytest.mark.parametrize("name", ["9starts_with_digit", "has space", "dash-ed", ""])
def test_invalid_metric_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        Registry().counter(name, "Bad.")


@pytest.mark.parametrize("label", ["le", "__reserved", "bad-label"])
def test_invalid_label_names_are_rejected(label: str) -> None:
    with pytest.raises(ValueError):
        Registry().counter("app_total", "Bad.", (label,))


def test_wrong_number_of_label_values_is_rejected() -> None:
    counter = Registry().counter("app_total", "Things.", ("a", "b"))
    with pytest.raises(ValueError):
        counter.labels("only-one")


def test_histogram_buckets_must_increase() -> None:
    with pytest.raises(ValueError):
        Registry().histogram("app_seconds", "Time.", buckets=[1.0, 0.5])


def test_counter_callbacks_read_totals_kept_elsewhere() -> None:
    registry = Registry()
    stats = {"datagrams_in": 7}
    counter = registry.counter_callback("app_datagrams_total", "Datagrams.", callback=lambda: stats["datagrams_in"])
    stats["datagrams_in"] = 9
    assert "# TYPE app_datagrams_total counter\napp_datagrams_total 9\n" in registry.render()
    assert counter.value() == 9
    with pytest.raises(TypeError):
        counter.inc()
    with pytest.raises(ValueError):
        registry.counter("app_datagrams_total", "Datagrams.")
