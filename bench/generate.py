"""Build a large, realistic istio-proxy log set by replicating the lab's real Envoy captures.

Each connection copies one lab scenario's client and server entries with a fresh request id,
fresh addresses and shifted times, so correlation has real work to do (DPE entries pair only by
address and time). Envoy's own log lines are mixed in (~5%), as ``kubectl logs`` shows them.
Output: ``OUT/client-<n>.log`` and ``OUT/server-<n>.log`` (one file per pod), in Istio's JSON
format, or with ``--format text`` in Istio's default TEXT format (``ISTIO_TEXT_FORMAT``: the JSON
entries rendered field by field, ``-`` for a missing value, as Envoy writes them; the typed
scenario's ``access_log_type`` has no place in that format and is dropped). ``--out -`` writes
every line to stdout instead (the 10M-line run streams them into ``wslog analyze -``).

    python bench/generate.py --lines 1000000 --out bench/out/data [--format text]
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyzer.istio_formats import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT  # noqa: E402

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


Render = Callable[[dict[str, object]], bytes]
_OPERATOR = re.compile(r"%[A-Z_]+(?:\([^)]*\))?%")


def text_renderer(envoy_format: str = ISTIO_TEXT_FORMAT) -> Render:
    """An entry as Envoy writes it in ``envoy_format``: each operator replaced by the JSON
    field Istio's JSON format fills from the same operator, ``-`` when it is null."""
    keys = {operator: key for key, operator in ISTIO_JSON_FORMAT.items()}
    keys["%UPSTREAM_CLUSTER%"] = "upstream_cluster"
    literals = _OPERATOR.split(envoy_format.removesuffix("\n"))
    fields = [keys[operator] for operator in _OPERATOR.findall(envoy_format)]

    def render(entry: dict[str, object]) -> bytes:
        parts = [literals[0]]
        for key, literal in zip(fields, literals[1:], strict=True):
            value = entry.get(key)
            parts.append("-" if value is None else str(value))
            parts.append(literal)
        return "".join(parts).encode()

    return render


def render_json(entry: dict[str, object]) -> bytes:
    return orjson.dumps(entry)


def connections(
    pods: int, seed: int, render: Render = render_json
) -> Iterator[list[tuple[str, int, bytes]]]:
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
                lines.append((side, n % pods, render(replicate(entry, base, at, n, ids))))
                if rng.random() < 0.05:
                    lines.append((side, n % pods, rng.choice(NOISE).encode()))
        yield lines


def generate(lines: int, out: Path, pods: int, seed: int, render: Render = render_json) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        (side, i): (out / f"{side}-{i}.log").open("wb")
        for side in ("client", "server")
        for i in range(pods)
    }
    written = 0
    try:
        for connection in connections(pods, seed, render):
            if written >= lines:
                break
            for side, pod, line in connection:
                files[(side, pod)].write(line + b"\n")
            written += len(connection)
    finally:
        for handle in files.values():
            handle.close()
    return written


def stream(lines: int, pods: int, seed: int, render: Render = render_json) -> int:
    """The same lines, all to stdout (in connection order), without keeping any."""
    written = 0
    out = sys.stdout.buffer
    for connection in connections(pods, seed, render):
        if written >= lines:
            break
        out.write(b"".join(line + b"\n" for _, _, line in connection))
        written += len(connection)
    out.flush()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "data"), help="- : stdout")
    parser.add_argument("--format", choices=("json", "text"), default="json")
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    render = text_renderer() if args.format == "text" else render_json
    if args.out == "-":
        written = stream(args.lines, args.pods, args.seed, render)
        print(f"wrote {written:,} lines to stdout", file=sys.stderr)
        return
    written = generate(args.lines, Path(args.out), args.pods, args.seed, render)
    print(f"wrote {written:,} lines to {args.out}")


if __name__ == "__main__":
    main()
