"""A correlator SIGKILLed mid-stream and restarted loses no connection: the lines it held
(waiting for a counterpart still to come from the other node) were not acknowledged, so its
partitions' consumers resume after their acknowledged floor and deliver them again. The
duplicates (connections counted both before the kill and after the replay) are measured and
printed; a forwarder restarted on the same ``--state-dir`` publishes only the new lines."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from analyzer.formats import default_formats
from analyzer.framing import Deframer
from analyzer.partition import line_keys, subject_token
from exporter.jetstream.subjects import consumer_name, nats_partition
from tests.nats_server import PARTITIONS, NatsServer
from tests.test_exporter import Samples, counted_connections
from tests.test_nats_e2e import (
    DEADLINE_S,
    REPLICAS,
    Correlator,
    expected,
    forward,
    nodes,
    summed,
    wait_for_connections,
    wait_for_lines,
)

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="make system-deps")
# Longer than the handover takes (nothing held is released by idleness before the server entries
# come), short enough that the replicas release everything soon after the last line.
PAIR_WINDOW_S = 10.0


async def _consumers(url: str) -> dict[int, tuple[int, int]]:
    """Each partition's (messages not yet delivered, delivered but not acknowledged)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out = {}
        for p in range(PARTITIONS):
            info = await js.consumer_info("WSLOG", consumer_name(p))
            out[p] = (info.num_pending, info.num_ack_pending)
        return out
    finally:
        await nc.close()


def consumers(url: str) -> dict[int, tuple[int, int]]:
    return asyncio.run(_consumers(url))


def partition_of(log: Path) -> int:
    framed = Deframer(str(log)).feed_lines(log.read_text().splitlines())
    key = line_keys(framed.lines, default_formats()).get_column("partition_key")[0]
    return nats_partition(subject_token(key), PARTITIONS)


def latest_scenario(node: Path) -> Path:
    """The scenario whose client entries come last in time: the watermark cannot pass them
    before its server's entries arrive, so they are held across the kill."""
    starts = {
        d: max(
            json.loads(line)["start_time"] for line in (d / "client.log").read_text().splitlines()
        )
        for d in node.iterdir()
    }
    return max(starts, key=lambda d: starts[d])


def settle(correlator: Correlator) -> Samples:
    """Two equal scrapes 0.5 s apart: nothing more will be counted without new input."""
    deadline = time.monotonic() + DEADLINE_S
    before = correlator.scrape()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after = correlator.scrape()
        if counted_connections(after) == counted_connections(before):
            return after
        before = after
    raise AssertionError("the correlator kept counting")


@dataclass
class Handover:
    """What one run of ``hand_over`` observed."""

    want: Counter[tuple[str, ...]]
    observed: Counter[tuple[str, ...]]
    held: int  # messages the first owner had delivered but not acknowledged when it went
    counted_by_first: int  # connections the first owner had counted (scraped before it went)

    @property
    def report(self) -> dict[str, int]:
        return {
            "held_at_stop": self.held,
            "counted_before_stop": self.counted_by_first,
            "connections": sum(self.want.values()),
            "lost": sum((self.want - self.observed).values()),
            "duplicates": sum((self.observed - self.want).values()),
        }


def hand_over(tmp_path: Path, url: str, *, graceful: bool) -> Handover:
    """Three replicas consume both nodes' lines except the server entries of the latest
    scenario; the replica holding its client entries goes (SIGTERM when ``graceful``, else
    SIGKILL) and another takes its partitions over; then the server node writes the rest."""
    node_a, node_b = nodes(tmp_path)
    paths = sorted([*node_a.glob("*/*.log"), *node_b.glob("*/*.log")])
    want, lines = expected(paths, pair_window=PAIR_WINDOW_S)
    straddler = latest_scenario(node_a)
    later = node_b / straddler.name / "server.log"
    later_text = later.read_text()
    later.unlink()  # the server node writes it after the handover
    victim_partition = partition_of(straddler / "client.log")
    victim = victim_partition % REPLICAS
    state = {n: tmp_path / f"state-{n.name}" for n in (node_a, node_b)}

    correlators = [Correlator(url, k, tmp_path, PAIR_WINDOW_S) for k in range(REPLICAS)]
    restarted: Correlator | None = None
    try:
        for node in (node_a, node_b):
            forward(node, url, tmp_path, "--state-dir", str(state[node]))
        wait_for_lines(correlators, lines - len(later_text.splitlines()))
        before = settle(correlators[victim])
        held = consumers(url)[victim_partition][1]
        assert held > 0, "the victim held nothing: the handover would prove nothing"
        if graceful:
            before = correlators[victim].stop()
        else:
            correlators[victim].kill()

        restarted = Correlator(url, victim, tmp_path, PAIR_WINDOW_S)
        later.write_text(later_text)
        second = forward(node_b, url, tmp_path, "--state-dir", str(state[node_b]))
        published = len(later_text.splitlines())
        assert f"forwarded {published} lines (0 already published)".encode() in second.stdout

        deadline = time.monotonic() + DEADLINE_S
        while any(pending for pending, _ in consumers(url).values()):
            assert time.monotonic() < deadline, "the replicas did not consume every line"
            time.sleep(0.2)
        alive = [c for k, c in enumerate(correlators) if k != victim] + [restarted]
        counted = sum(want.values()) - sum(counted_connections(before).values())
        wait_for_connections(alive, counted)  # every connection released, by idleness at last
        for c in alive:
            settle(c)
        finals = [c.stop() for c in alive]
    finally:
        for c in [*correlators, *([restarted] if restarted else [])]:
            if c.process.poll() is None:
                c.kill()
    observed = summed([*finals, before])
    return Handover(want, observed, held, sum(counted_connections(before).values()))


def test_a_correlator_stopped_with_sigterm_leaves_what_it_holds_to_the_next_owner(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """SIGTERM mid-stream: the held entries are neither counted unpaired nor acknowledged, so
    the next owner counts each connection once, with both sides (without the source's
    ``flush_on_stop = False`` the stopping replica flushed them as client-only and the next
    owner counted them again)."""
    run = hand_over(tmp_path, nats_server.url, graceful=True)
    print("nats sigterm:", json.dumps(run.report))
    assert run.observed == run.want


def test_a_correlator_killed_mid_stream_and_restarted_loses_no_connection(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    run = hand_over(tmp_path, nats_server.url, graceful=False)
    print("nats restart:", json.dumps(run.report))
    assert not run.want - run.observed
    assert any("h2-connect-not-allowed" in k for k in run.want)
    assert run.report["duplicates"] <= run.report["counted_before_stop"]
