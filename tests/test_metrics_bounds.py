"""Series that stay bounded and counts that mean one thing (docs/design.md section 4): a closed
source frees its place under the cap, the ``source`` label never carries a path or a pod UID,
and each WebSocket that left the correlation state early is counted once."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analyzer.formats import default_formats
from analyzer.pipeline import Step
from exporter.health import Health
from exporter.metrics import OVERFLOW, Metrics, new_registry, record_step, source_label
from exporter.run import build_live
from exporter.settings import PipelineSettings
from exporter.sources import Chunk
from tests.conftest import TESTDATA

Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples_of(metrics_registry: object) -> Samples:
    text = generate_latest(metrics_registry).decode()  # type: ignore[arg-type]  # a CollectorRegistry
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def newest_sources(metrics_registry: object) -> set[str]:
    series = samples_of(metrics_registry).get("wslog_source_newest_entry_timestamp_seconds", [])
    return {labels["source"] for labels, _ in series}


def test_a_closed_source_frees_its_place_under_the_series_cap() -> None:
    registry = new_registry()
    health = Health(Metrics(registry, max_series=2))
    for n in range(2):
        health.stream_opened("files", f"/logs/old-{n}.log")
        health.metrics.record_newest(f"/logs/old-{n}.log", 1.0)
        health.stream_closed("files", f"/logs/old-{n}.log")
    health.stream_opened("files", "/logs/live.log")
    health.metrics.record_newest("/logs/live.log", 2.0)
    assert newest_sources(registry) == {"live.log"}


def test_the_overflow_series_goes_once_every_folded_source_closed() -> None:
    registry = new_registry()
    health = Health(Metrics(registry, max_series=1))
    for name in ("a.log", "b.log", "c.log"):
        health.stream_opened("files", f"/l/{name}")
        health.metrics.record_newest(f"/l/{name}", 1.0)
    assert newest_sources(registry) == {"a.log", OVERFLOW}
    health.stream_closed("files", "/l/b.log")
    assert newest_sources(registry) == {"a.log", OVERFLOW}
    health.stream_closed("files", "/l/c.log")
    assert newest_sources(registry) == {"a.log"}


def test_one_pods_rotated_files_share_a_label_that_stays_while_one_is_open() -> None:
    registry = new_registry()
    health = Health(Metrics(registry))
    pod = "/var/log/pods/app_ws-server-7d9_0b8c6f3e-1d2a-4c5b-9e8f-123456789abc/istio-proxy"
    health.stream_opened("files", f"{pod}/0.log.20261201-101500")
    health.stream_opened("files", f"{pod}/0.log")
    health.metrics.record_newest(f"{pod}/0.log", 5.0)
    health.stream_closed("files", f"{pod}/0.log.20261201-101500")
    assert newest_sources(registry) == {"app/ws-server-7d9"}


def test_source_labels_name_the_pod_never_its_uid_or_a_directory() -> None:
    uid = "0b8c6f3e-1d2a-4c5b-9e8f-123456789abc"
    cases = {
        f"/var/log/pods/app_ws-server-7d9_{uid}/istio-proxy/0.log": "app/ws-server-7d9",
        f"/var/log/containers/ws-client-5f_app_istio-proxy-{'a' * 64}.log": "app/ws-client-5f",
        "app/ws-client-5f": "app/ws-client-5f",
        "-": "-",
        "/home/me/saved logs/server.log": "server.log",
        "/tmp/" + "x" * 500 + ".log": "x" * 128,
        '/tmp/we{ird}"name\n.log': "we_ird__name_.log",
    }
    assert {raw: source_label(raw) for raw in cases} == cases


def _released_counts(max_pending: int) -> Samples:
    registry = new_registry()
    metrics = Metrics(registry)

    def on_step(step: Step, websockets: object) -> None:
        record_step(metrics, step, websockets, live.pipeline.correlator.pending)  # type: ignore[arg-type]  # a polars frame

    settings = PipelineSettings(timedelta(seconds=5), timedelta(seconds=1), max_pending, 1.0, None)
    live = build_live(settings, default_formats(), on_step)
    for log in sorted((TESTDATA / "lab" / "json").glob("*/client.log")):
        lines = tuple(log.read_text().splitlines())
        live.accept(Chunk(str(log), lines, None))
        live.tick()
    live.finish()
    return samples_of(registry)


def test_each_websocket_that_left_early_or_unpaired_is_counted_once() -> None:
    capped, roomy = _released_counts(max_pending=2), _released_counts(max_pending=200_000)
    for samples in (capped, roomy):
        unpaired = sum(
            value
            for labels, value in samples["wslog_connections_total"]
            if labels["pairing"] != "paired"
        )
        evicted = samples["wslog_pending_evicted_total"]
        not_both = sum(value for labels, value in evicted if labels["side"] != "both")
        assert unpaired > 10
        assert not_both == unpaired
    by_reason = {labels["reason"]: value for labels, value in capped["wslog_pending_evicted_total"]}
    assert by_reason.get("size-cap", 0) > 0
    assert {labels["reason"] for labels, _ in roomy["wslog_pending_evicted_total"]} == {"window"}
