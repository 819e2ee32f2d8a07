"""Mesh scale on NATS JetStream: the partition skew and lines/s through 1 forwarder + R correlators.

1. Skew (no server): a generated mesh, many client pods (Zipf-distributed traffic) and a few
   busy gateway pods, keyed as ``analyzer.partition`` keys it (client pod IP; request id behind a
   gateway), partitioned as nats-server's ``partition(N,1)`` does. Printed: the busiest
   partition's load over the mean, with gateways keyed by request id (the design) and, for
   comparison, by the gateway pod's IP.
2. Throughput (a real nats-server on 127.0.0.1): the bench generator's connections moved onto
   distinct client pod IPs, published by one forwarder (in process), then consumed by R = 1 and
   R = 2 correlator processes (``wslog exporter --source nats``) from the start of the stream;
   lines/s in total and per replica, against the forwarder's rate in the same run.

    python bench/nats_bench.py --lines 200000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from generate import connections  # bench/generate.py, beside this script

from analyzer.formats import default_formats
from analyzer.partition import BY_ADDRESS, BY_REQUEST, subject_token
from exporter.files import FileSource
from exporter.jetstream import Forwarder, LoggedEvents
from exporter.jetstream.subjects import consumer_name, nats_partition
from exporter.settings import FileSettings, NatsSettings
from tests.nats_server import NatsServer
from tests.test_exporter import scrape, total
from tests.test_nats_e2e import Correlator

PARTITIONS = 4


def skew(
    connections_n: int, clients: int, gateways: int, gateway_share: float, n: int
) -> dict[str, float]:
    rng = random.Random(1)
    weights = [1 / (i + 1) ** 1.1 for i in range(clients)]
    cumulative = list(itertools.accumulate(weights))
    design: Counter[int] = Counter()
    by_ip: Counter[int] = Counter()
    for i in range(connections_n):
        if rng.random() < gateway_share:
            gateway = rng.randrange(gateways)
            design[nats_partition(subject_token(f"{BY_REQUEST}{i:032x}"), n)] += 1
            by_ip[nats_partition(subject_token(f"{BY_ADDRESS}10.9.0.{gateway}"), n)] += 1
        else:
            pod = rng.choices(range(clients), cum_weights=cumulative)[0]
            key = nats_partition(
                subject_token(f"{BY_ADDRESS}10.{pod >> 16}.{pod >> 8 & 255}.{pod & 255}"), n
            )
            design[key] += 1
            by_ip[key] += 1
    mean = connections_n / n
    busiest_client = weights[0] / sum(weights) * (1 - gateway_share)
    return {
        "partitions": n,
        "max_over_mean": round(max(design.values()) / mean, 3),
        "max_over_mean_gateways_by_ip": round(max(by_ip.values()) / mean, 3),
        "busiest_client_share": round(busiest_client, 4),
    }


def node_files(out: Path, lines: int, clients: int) -> int:
    """The generator's connections, clients on node files, each connection's client on a pod IP."""
    out.mkdir(parents=True)
    written = 0
    with (out / "client.log").open("wb") as client, (out / "server.log").open("wb") as server:
        for n, connection in enumerate(connections(4, seed=1)):
            if written >= lines:
                break
            ip = f"10.1.{n % clients >> 8}.{n % clients & 255}"
            for side, _, line in connection:
                if line.startswith(b"{"):
                    line = _relocate(line, side, ip)
                (client if side == "client" else server).write(line + b"\n")
                written += 1
    return written


def _relocate(line: bytes, side: str, ip: str) -> bytes:
    entry = json.loads(line)
    fields = ("upstream_local_address", "downstream_remote_address")
    for field in fields if side == "client" else fields[1:]:
        value = entry.get(field)
        if isinstance(value, str) and value.startswith("127.0.0.1:"):
            entry[field] = ip + value[len("127.0.0.1") :]
    return orjson.dumps(entry)


def forward(url: str, data: Path) -> float:
    settings = FileSettings(globs=(f"{data}/*.log",), from_start=True, once=True)
    forwarder = Forwarder(NatsSettings(url=url), default_formats())
    started = time.perf_counter()
    stats = forwarder.run(FileSource(settings), threading.Event(), LoggedEvents())
    return stats.published / (time.perf_counter() - started)


async def _reset(url: str) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for p in range(PARTITIONS):
        with contextlib.suppress(Exception):
            await js.delete_consumer("WSLOG", consumer_name(p))
    await nc.close()


def correlate(url: str, replicas: int, lines: int, tmp: Path) -> dict[str, object]:
    asyncio.run(_reset(url))
    started = time.perf_counter()
    running = [
        Correlator(url, k, tmp, 10.0, partitions=PARTITIONS, replicas=replicas)
        for k in range(replicas)
    ]
    try:
        while True:
            counted = [total(scrape(c.port), "wslog_log_lines_total") for c in running]
            if sum(counted) >= lines:
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
    finally:
        for c in running:
            c.kill()
    return {
        "replicas": replicas,
        "lines_per_s": round(lines / seconds),
        "per_replica": [round(c / seconds) for c in counted],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    for n in (12, 30):
        print(json.dumps({"skew": skew(200_000, args.clients, 4, 0.4, n)}))
    if shutil.which("nats-server") is None:
        sys.exit("nats-server not found: make system-deps")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = NatsServer(tmp, partitions=PARTITIONS)
        try:
            lines = node_files(tmp / "data", args.lines, args.clients)
            rate = forward(server.url, tmp / "data")
            print(json.dumps({"lines": lines, "forwarder_lines_per_s": round(rate)}))
            for replicas in (1, 2):
                print(json.dumps(correlate(server.url, replicas, lines, tmp)))
        finally:
            server.close()


if __name__ == "__main__":
    main()
