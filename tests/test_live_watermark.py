"""The exporter's watermark is the oldest progress among the sources that are delivering: a
pod's log that lags behind another's is waited for, never released half-paired."""

from __future__ import annotations

import re
from datetime import timedelta

import polars as pl

from analyzer.formats import default_formats
from analyzer.pipeline import Step
from exporter.live import HOLD, SourceProgress
from exporter.run import build_live
from exporter.settings import PipelineSettings
from exporter.sources import Chunk
from tests.conftest import TESTDATA

H1 = TESTDATA / "lab" / "json" / "h1"


def _an_hour_later(lines: list[str]) -> tuple[str, ...]:
    moved = [line.replace('"2026-11-26T00:', '"2026-11-26T01:') for line in lines]
    return tuple(re.sub(r'"request_id":"[0-9a-f]', '"request_id":"f', line) for line in moved)


def test_a_lagging_pod_is_waited_for_while_another_runs_ahead() -> None:
    seen: list[pl.DataFrame] = []

    def on_step(step: Step, websockets: pl.DataFrame) -> None:
        seen.append(websockets)

    settings = PipelineSettings(timedelta(seconds=2), timedelta(seconds=1), 50_000, 1.0, None)
    live = build_live(settings, default_formats(), on_step)
    client = (H1 / "client.log").read_text().splitlines()
    server = (H1 / "server.log").read_text().splitlines()
    live.accept(Chunk("app/ahead", _an_hour_later(client), None))
    live.tick()
    live.accept(Chunk("app/ws-client", tuple(client), None))
    live.tick()
    live.accept(Chunk("app/ws-server", tuple(server), None))
    live.tick()
    live.finish()
    connections = pl.concat(seen)
    assert connections.height == 2
    assert connections.get_column("pairing").to_list().count("paired") == 1


def test_a_silent_source_stops_holding_the_watermark_back() -> None:
    progress = SourceProgress(idle_s=5.0)
    early = pl.DataFrame(
        {"source": ["quiet", "busy"], "start_time": [1_000_000, 9_000_000]},
        schema={"source": pl.String, "start_time": pl.Datetime("us", "UTC")},
    )
    progress.learn(early, now=100.0)
    assert progress.watermark(now=101.0).timestamp() == 1.0  # type: ignore[union-attr]
    progress.learn(early.filter(pl.col("source") == "busy"), now=104.0)
    assert progress.watermark(now=106.0).timestamp() == 9.0  # type: ignore[union-attr]


def test_an_opened_stream_holds_the_watermark_until_it_delivers() -> None:
    """At start every file or pod log opened is waited for: the first one read must not
    release the others' connections before they are read; one that stays silent for
    ``idle_s``, or ends without a line, is not waited for."""
    progress = SourceProgress(idle_s=5.0)
    busy = pl.DataFrame(
        {"source": ["busy"], "start_time": [9_000_000]},
        schema={"source": pl.String, "start_time": pl.Datetime("us", "UTC")},
    )
    progress.opened("busy", now=100.0)
    progress.opened("slow", now=100.0)
    progress.learn(busy, now=101.0)
    assert progress.watermark(now=102.0) == HOLD
    progress.learn(busy.with_columns(source=pl.lit("slow")), now=103.0)
    assert progress.watermark(now=103.0).timestamp() == 9.0  # type: ignore[union-attr]
    progress.opened("silent", now=104.0)
    assert progress.watermark(now=105.0) == HOLD
    both = pl.concat([busy, busy.with_columns(source=pl.lit("slow"))])
    progress.learn(both, now=108.0)
    assert progress.watermark(now=109.5).timestamp() == 9.0  # type: ignore[union-attr]
    progress.opened("ended", now=110.0)
    progress.closed("ended")
    assert progress.watermark(now=110.0).timestamp() == 9.0  # type: ignore[union-attr]
