"""Decode micro-benchmark: wslog's read + deframe + decode against a polars floor.

Generates N lines (default 1,000,000): Istio JSON entries, ~5% Envoy / pilot-agent messages and
some Istio TEXT entries, writes them to a temporary file, then times in the same run
- the floor: ``pl.read_lines`` + ``str.json_decode`` of the JSON lines + count by protocol/code,
  eagerly, and the same as a lazy query on the streaming engine (the strongest floor);
- wslog: ``analyzer.inputs.InputSet`` over the file (blocks, framing, decode, accounting).
Prints both wall times and their ratio. Not a test; run on demand:
``.venv/bin/python bench/decode_bench.py [--lines N]``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import polars as pl

from analyzer.formats import default_formats
from analyzer.inputs import InputSet, expand

NOISE = [
    "[2026-11-26 00:13:28.247][15][info][upstream] cds: added/updated 3 cluster(s)",
    "2026-11-26T00:13:28.247712Z\tinfo\txdsproxy\tconnected to upstream XDS server",
    "2026-11-26T00:13:28.247712Z\twarn\tenvoy config\tStreamAggregatedResources gRPC config",
]
TEXT = (
    '[2026-11-26T00:13:28.247Z] "GET /ws/{i} HTTP/1.1" 101 UC upstream_reset_after_response'
    '_started{{connection_termination}} - "-" 34 22 {d} - "-" "Python/3.11 websockets/17.4" '
    '"{rid}" "websockets-server:8080" "10.0.0.2:8080" outbound|8080||websockets-server.default'
    ".svc.cluster.local 10.0.0.1:45536 10.0.0.3:8080 10.0.0.1:45530 - default"
)


def json_line(i: int, rng: random.Random) -> str:
    code = rng.choice([101, 101, 101, 200, 503, 0])
    entry = {
        "start_time": f"2026-11-26T00:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
        "method": "GET",
        "path": f"/ws/{i % 97}",
        "protocol": rng.choice(["HTTP/1.1", "HTTP/2"]),
        "response_code": code,
        "response_flags": rng.choice(["UC", "UR", "-", "UF,URX"]),
        "response_code_details": "upstream_reset_after_response_started{connection_termination}",
        "connection_termination_details": None,
        "upstream_transport_failure_reason": None,
        "bytes_received": rng.randrange(10_000),
        "bytes_sent": rng.randrange(10_000),
        "duration": rng.randrange(100_000),
        "upstream_service_time": None,
        "x_forwarded_for": None,
        "user_agent": "Python/3.11 websockets/17.4",
        "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "authority": "websockets-server.default.svc.cluster.local:8080",
        "upstream_host": "10.0.0.2:8080",
        "upstream_cluster": "outbound|8080||websockets-server.default.svc.cluster.local",
        "upstream_local_address": f"10.0.0.1:{rng.randrange(30000, 60000)}",
        "downstream_local_address": "10.0.0.3:8080",
        "downstream_remote_address": f"10.0.0.1:{rng.randrange(30000, 60000)}",
        "requested_server_name": None,
        "route_name": "default",
    }
    return orjson.dumps(entry).decode()


def generate(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(n):
            roll = rng.random()
            if roll < 0.05:
                out.write(rng.choice(NOISE))
            elif roll < 0.10:
                out.write(TEXT.format(i=i, d=rng.randrange(9999), rid=uuid.uuid4()))
            else:
                out.write(json_line(i, rng))
            out.write("\n")


def floor(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    lines = pl.read_lines(path, name="text")["text"]
    decoded = lines.filter(lines.str.starts_with("{")).str.json_decode()
    counts = decoded.struct.unnest().group_by("protocol", "response_code").len()
    return time.perf_counter() - started, int(counts["len"].sum())


def floor_streaming(path: Path) -> tuple[float, int]:
    """The strongest floor: lazy, streaming engine, only the two fields counted are declared."""
    started = time.perf_counter()
    dtype = pl.Struct({"protocol": pl.String, "response_code": pl.Int64})
    query = (
        pl.scan_lines(path, name="text")
        .filter(pl.col("text").str.starts_with("{"))
        .select(pl.col("text").str.json_decode(dtype).struct.unnest())
        .group_by("protocol", "response_code")
        .len()
    )
    counts = query.collect(engine="streaming")
    return time.perf_counter() - started, int(counts["len"].sum())


def wslog(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    inputs = InputSet(expand([str(path)]), default_formats())
    entries = sum(chunk.entries.height for chunk in inputs)
    return time.perf_counter() - started, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        generate(path, args.lines)
        size_mb = path.stat().st_size / 1e6
        floor_s, floor_n = floor(path)
        stream_s, _ = floor_streaming(path)
        wslog_s, wslog_n = wslog(path)
    print(f"{args.lines:,} lines, {size_mb:.0f} MB")
    print(f"floor (read_lines + json_decode + count): {floor_s:.2f}s, {floor_n:,} JSON entries")
    print(f"wslog (read + deframe + decode):          {wslog_s:.2f}s, {wslog_n:,} entries")
    print(f"floor, lazy streaming, 2 declared fields: {stream_s:.2f}s")
    print(f"ratio vs eager floor: {wslog_s / floor_s:.2f}x")
    print(f"ratio vs streaming floor: {wslog_s / stream_s:.2f}x")


if __name__ == "__main__":
    main()
