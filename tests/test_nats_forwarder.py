"""The forwarder's own health and metrics (``wslog exporter --forward``) on a real nats-server:
/healthz always, /readyz once connected and the stream exists and not while NATS is away, and
/metrics counting the lines stored, the publications that failed while NATS was away and were
retried, and nothing lost once it is back."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
import pytest

from tests.conftest import TESTDATA
from tests.nats_server import NatsServer, free_port
from tests.test_exporter import Samples, scrape, total
from tests.test_nats_e2e import DEADLINE_S, wslog

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="make system-deps")


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_until(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {DEADLINE_S}s")


def stored(port: int) -> float:
    samples: Samples = scrape(port)
    return sum(
        v
        for labels, v in samples.get("wslog_forward_lines_total", [])
        if labels == {"result": "stored"}
    )


def test_the_forwarder_serves_health_and_counts_published_lines_and_retries(
    tmp_path: Path,
) -> None:
    log = tmp_path / "pod" / "istio-proxy" / "0.log"
    log.parent.mkdir(parents=True)
    lines = (TESTDATA / "lab" / "json" / "h1" / "client.log").read_text().splitlines()
    log.write_text(lines[0] + "\n")
    server = NatsServer(tmp_path)
    port = free_port()
    forwarder = wslog(
        "exporter", "--source", "files", "--path", str(log), "--from-start",
        "--forward", server.url, "--listen", f"127.0.0.1:{port}", "--drain-seconds", "1",
        log=tmp_path / "forwarder.log",
    )  # fmt: skip
    try:
        wait_until(lambda: status(port, "/readyz") == 200, "ready")
        assert status(port, "/healthz") == 200
        wait_until(lambda: stored(port) == 1, "one line stored")
        assert total(scrape(port), "wslog_ready") == 1

        server.close()  # NATS goes away: not ready, and the next line cannot be published
        wait_until(lambda: status(port, "/readyz") == 503, "unready without NATS")
        assert status(port, "/healthz") == 200
        entry = json.loads(lines[0]) | {"request_id": "forwarded-while-nats-was-away"}
        with log.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        wait_until(
            lambda: total(scrape(port), "wslog_forward_publish_errors_total") >= 1,
            "a failed publication counted",
        )
        assert total(scrape(port), "wslog_ready") == 0

        server = NatsServer(tmp_path, port=server.port)  # back, on the same store
        wait_until(lambda: status(port, "/readyz") == 200, "ready again")
        # The failed publication may have reached the server as it came back: its retry is
        # then acknowledged as a duplicate. Either way the stream holds each line once.
        wait_until(
            lambda: total(scrape(port), "wslog_forward_lines_total") >= 2, "the line retried"
        )
        assert asyncio.run(stream_messages(server.url)) == 2
        forwarder.send_signal(signal.SIGTERM)
        assert forwarder.wait(DEADLINE_S) == 0, (tmp_path / "forwarder.log").read_text()
    finally:
        if forwarder.poll() is None:
            forwarder.kill()
            forwarder.wait(DEADLINE_S)
        server.close()
    assert "forwarded 2 lines" in (tmp_path / "forwarder.log").read_text()


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("WSLOG")
        return int(info.state.messages)
    finally:
        await nc.close()
