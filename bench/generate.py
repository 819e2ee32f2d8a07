"""Build a large, realistic istio-proxy log set by replicating the lab's real Envoy captures.

Each connection copies one lab scenario's client and server entries with a fresh request id,
fresh addresses and shifted times, so correlation has real work to do (DPE entries pair only by
address and time). Envoy's own log lines are mixed in (~5%), as ``kubectl logs`` shows them.
Output: ``OUT/client-<n>.log`` and ``OUT/server-<n>.log`` (one file per pod), JSON format.

    python bench/generate.py --lines 1000000 --out bench/out/data
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "testdata" / "lab" / "json"
# scenario -> weight: mostly healthy WebSockets, a realistic share of failures.
MIX = {
    "h1": 40,
    "h2": 30,
    "concurrent-h2": 5,
    "h2-no-allow-connect": 8,
    "app-down": 3,
    "app-refuses": 3,
    "app-no-upgrade": 2,
    "app-no-upgrade-h2": 2,
    "client-drop": 3,
    "long-lived": 2,
    "long-lived-typed": 2,
}
NOISE = [
    "2026-11-25T10:00:00.000000Z\tinfo\txdsproxy\tconnected to upstream XDS server: "
    "istiod.istio-system.svc:15012",
    "2026-11-25T10:00:00.000000Z\twarning\tenvoy config\tgRPC config stream to xds-grpc "
    "closed since 1800s ago: 13, ",
    "[2026-11-25 10:00:00.000][22][info][upstream] "
    "[source/common/upstream/cds_api_helper.cc:32] cds: add 12 cluster(s), remove 0 cluster(s)",
    "2026-11-25T10:00:00.000000Z\tinfo\tcache\tgenerated new workload certificate",
]
ADDRESS_KEYS = ("downstream_remote_address", "upstream_local_address")


def load_templates() -> dict[str, tuple[list[dict[str, object]], list[dict[str, object]]]]:
    out = {}
    for scenario in MIX:
        sides = []
        for name in ("client.log", "server.log"):
            lines = (LAB / scenario / name).read_text().splitlines()
            sides.append([orjson.loads(line) for line in lines if line.startswith("{")])
        out[scenario] = (sides[0], sides[1])
    return out


def _base_time(entries: list[dict[str, object]]) -> datetime:
    return min(datetime.fromisoformat(str(e["start_time"])) for e in entries)


def replicate(
    entry: dict[str, object], base: datetime, at: datetime, n: int, fresh: dict[str, str]
) -> dict[str, object]:
    """A copy of ``entry`` moved to ``at``; ids and ephemeral ports renamed consistently for
    connection ``n`` (``fresh`` maps old to new values across both sides of the connection)."""
    copy = dict(entry)
    start = datetime.fromisoformat(str(entry["start_time"]))
    moved = at + (start - base)
    copy["start_time"] = moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rid = entry.get("request_id")
    if isinstance(rid, str):
        copy["request_id"] = fresh.setdefault(rid, f"{n:08x}-{len(fresh):04x}-4000-8000-{n:012x}")
    for key in ADDRESS_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and ":" in value:
            host = value.rsplit(":", 1)[0]
            port = 10000 + (n * 7 + len(fresh)) % 50000
            copy[key] = fresh.setdefault(value, f"{host}:{port}")
    return copy


def connections(pods: int, seed: int) -> Iterator[list[tuple[str, int, bytes]]]:
    """Endless connections, each as its lines ``(side, pod, line)``, 3 ms apart."""
    rng = random.Random(seed)
    templates = load_templates()
    names, weights = list(MIX), list(MIX.values())
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    for n in itertools.count():
        scenario = rng.choices(names, weights)[0]
        client, server = templates[scenario]
        base = _base_time(client + server)
        at = start + timedelta(milliseconds=n * 3)
        ids: dict[str, str] = {}
        lines = []
        for side, entries in (("client", client), ("server", server)):
            for entry in entries:
                lines.append((side, n % pods, orjson.dumps(replicate(entry, base, at, n, ids))))
                if rng.random() < 0.05:
                    lines.append((side, n % pods, rng.choice(NOISE).encode()))
        yield lines


def generate(lines: int, out: Path, pods: int, seed: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        (side, i): (out / f"{side}-{i}.log").open("wb")
        for side in ("client", "server")
        for i in range(pods)
    }
    written = 0
    try:
        for connection in connections(pods, seed):
            if written >= lines:
                break
            for side, pod, line in connection:
                files[(side, pod)].write(line + b"\n")
            written += len(connection)
    finally:
        for handle in files.values():
            handle.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "data")
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    written = generate(args.lines, args.out, args.pods, args.seed)
    print(f"wrote {written:,} lines to {args.out}")


if __name__ == "__main__":
    main()
