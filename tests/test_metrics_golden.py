"""The exporter's ``/metrics`` text for the lab's JSON captures, pinned by a golden file
(tests/golden/metrics/lab-json.prom; regenerate with ``WSLOG_UPDATE_GOLDEN=1 pytest
tests/test_metrics_golden.py`` and review the diff).

Every capture goes through the exporter's own wiring (``exporter.run.metered_live``) in this
process, one tick per file, on a clock that stands still, so the text depends on nothing but
the input. Left out: ``_created`` samples (the wall clock) and the build info (the version);
samples are sorted within their family, and values are taken to 14 significant digits, so the
order in which one step records its connections cannot move a float sum's last bit.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import generate_latest
from prometheus_client.utils import floatToGoString

from analyzer.formats import default_formats
from exporter.metrics import Metrics, new_registry
from exporter.run import metered_live
from exporter.settings import PipelineSettings
from exporter.sources import Chunk
from tests.conftest import GOLDEN, ROOT, TESTDATA, golden

LAB = TESTDATA / "lab" / "json"
PROM = GOLDEN / "metrics" / "lab-json.prom"
# The exporter's defaults (wslog exporter --help).
SETTINGS = PipelineSettings(timedelta(seconds=5), timedelta(seconds=1), 50_000, 1.0, None)
LEFT_OUT = ("wslog_build_info",)


def lab_metrics() -> str:
    registry = new_registry()
    metered = metered_live(SETTINGS, default_formats(), Metrics(registry))
    metered.live.clock = lambda: 0.0
    for log in sorted(LAB.glob("*/*.log")):
        source = str(log.relative_to(ROOT))  # as a files source names it, minus the checkout
        metered.live.accept(Chunk(source, tuple(log.read_text().splitlines()), None))
        metered.live.tick()
        metered.after_tick()
    metered.live.finish()
    metered.after_tick()
    return exposition(generate_latest(registry).decode())


def exposition(text: str) -> str:
    """``text`` without what changes from run to run, each family's samples in sorted order."""
    families: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("# HELP"):
            families.append([])
        families[-1].append(line)
    out = []
    for lines in families:
        name = lines[0].split()[2]
        if name in LEFT_OUT or name.endswith("_created"):
            continue
        comments = [line for line in lines if line.startswith("#")]
        samples = [_sample(line) for line in lines if not line.startswith("#")]
        out += comments + sorted(s for s in samples if "_created" not in s.split("{")[0])
    return "\n".join(out) + "\n"


def _sample(line: str) -> str:
    series, value = line.rsplit(" ", 1)
    rounded = float(f"{float(value):.14g}")
    text: str = floatToGoString(rounded)  # type: ignore[no-untyped-call]  # unannotated upstream
    return f"{series} {text}"


def test_lab_captures_give_the_golden_metrics_text() -> None:
    actual = lab_metrics()
    assert actual == golden(PROM, actual.encode()).decode()


def test_the_golden_text_holds_every_outcome_the_lab_captured() -> None:
    text = PROM.read_text()
    for outcome in ('outcome="upgraded"', 'outcome="failed"', 'outcome="rejected"'):
        assert outcome in text
    assert 'cause="h2-connect-not-allowed"' in text
    assert "_created" not in text and "wslog_build_info" not in text
