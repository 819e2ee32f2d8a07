from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, settings

from analyzer.pipeline import AnalysisResult
from analyzer.schema import CONNECTION_SCHEMA, ENTRY_BRIEF_FIELDS
from tests.nats_server import NatsServer

# Property tests run the same examples on every run (``ci``, the default), and never shrink: on
# a loaded 2-core machine shrinking a slow pipeline can outlast the test timeout. A failure
# prints the example; rerun it with WSLOG_HYPOTHESIS_PROFILE=dev to explore and shrink.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("WSLOG_HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
GOLDEN = ROOT / "tests" / "golden"
UPDATE_GOLDEN = "WSLOG_UPDATE_GOLDEN"


def golden(path: Path, actual: bytes) -> bytes:
    """A golden file's content, written from ``actual`` first when ``WSLOG_UPDATE_GOLDEN=1``
    (then review the diff): real input beside its expected output, compared by the caller."""
    if os.environ.get(UPDATE_GOLDEN):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual)
    assert path.exists(), f"no golden file {path}: run with {UPDATE_GOLDEN}=1"
    return path.read_bytes()


def run_wslog(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m wslog ARGS`` from the clone, as a user runs it (stdin empty), its output
    captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "wslog", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


ENTRIES = ("client", "server", "unsided")


def verdicts(result: AnalysisResult) -> pl.DataFrame:
    """The classified connections without the file names and line numbers their entries came
    from (nor what only a file name tells: a gateway from a client sidecar): what must not change
    with the shape of the input. Sorted, so frames compare."""
    scalars = [c for c in CONNECTION_SCHEMA if c not in ENTRIES]
    brief = [f for f in ENTRY_BRIEF_FIELDS if f not in ("source", "line_no")]
    fields = [pl.col(e).struct.field(f).alias(f"{e}.{f}") for e in ENTRIES for f in brief]
    flat = result.connections.select(*scalars, *fields).with_columns(
        # Whether the client-side proxy is a gateway comes from its pod's name, which a stream
        # merging several pods' logs no longer carries: compare the role.
        pl.col("reported_by").replace("gateway", "client")
    )
    return flat.sort(flat.columns, nulls_last=True)


@pytest.fixture(scope="session")
def testdata() -> Path:
    return TESTDATA


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server for one test (``tests/nats_server.py``), stopped after it."""
    server = NatsServer(tmp_path)
    try:
        yield server
    finally:
        server.close()
