"""What figure 1's target (``wslog analyze`` <= 2.0x the polars floor) leaves for the work
itself: two stand-in verdict pipelines on the same corpus, by turns with the floor and analyze.

    python bench/bounds.py [--lines 1000000] [--repeat 3] [--block-mib 8]

Each run is a child process (``run.measure``: wall time, peak RSS). The stand-ins decode the
same 28 keys analyze decodes (the default formats' JSON keys; integers typed at decode), tell
the client side from the server side by the upstream cluster, join the two on the request id,
give each connection a path, an outcome and a cause with a handful of ``when``/``then``
expressions, and count by the three with five example ids each. They are cost models, not
analyzers: no rejects or line accounting, no TEXT, no time order across files, no pairing
window, no address pairing, no edge or one-sided verdicts, examples without their records.
- ``whole``: one lazy query over the whole corpus (projection pushdown prunes what the
  verdict does not read). Its memory grows with the input, which target 2 rules out.
- ``bounded``: the least a flat-memory analysis of this shape does. The files are read in
  lock step in 8 MiB blocks (analyze's block size, and the stand-in's fastest of 2 to 96;
  ``--block-mib``); a read-ahead thread decodes the next blocks while the main thread joins
  this block's two sides, carrying the entries without a partner to the next block.
Read the ratios against the floor: the bounded stand-in's is what a flat-memory pipeline of
blocks and polars joins pays on this machine before any of what the list above leaves out.
"""

from __future__ import annotations

import argparse

import exporter_vs_mtail
from run import POLARS_FLOOR, PY, WSLOG, measure

from analyzer.formats import ValueType, default_formats, json_keys

COMMON = """
import sys, threading, queue, polars as pl
from pathlib import Path
KEYS, INTS = sys.argv[2].split(","), set(sys.argv[3].split(","))
DTYPE = pl.Struct({k: (pl.Int64 if k in INTS else pl.String) for k in KEYS})
FILES = sorted(Path(sys.argv[1]).glob("*.log"))
GROUP = ("path", "outcome", "cause")

def decoded(lines, name):
    return (lines.with_row_index("line_no").filter(pl.col("text").str.starts_with("{"))
            .select("line_no", pl.col("text").str.json_decode(DTYPE).alias("e")).unnest("e")
            .with_columns(pl.col("start_time").str.to_datetime(time_zone="UTC"),
                          source=pl.lit(name)))

def verdicts(joined):
    code, flags = pl.col("response_code"), pl.col("response_flags")
    server = pl.col("protocol_s")
    return joined.with_columns(
        path=pl.when(server == "HTTP/2").then(pl.lit("h1-h2"))
        .when(server.is_not_null()).then(pl.lit("h1-h1")).otherwise(pl.lit("unknown")),
        outcome=pl.when(code == 101).then(pl.lit("upgraded"))
        .when((code == 503) & flags.str.contains("UF|URX")).then(pl.lit("failed"))
        .when(pl.col("response_code_s") == 0).then(pl.lit("failed"))
        .when(code >= 400).then(pl.lit("rejected")).otherwise(pl.lit("other")),
        cause=pl.when(pl.col("response_code_details").str.contains("connect"))
        .then(pl.lit("h2-connect-not-allowed"))
        .when(flags.str.contains("UC")).then(pl.lit("upstream-closed")).otherwise(pl.lit("")),
    ).group_by(*GROUP).agg(pl.len().alias("n"), pl.col("request_id").head(5))

CLIENT = pl.col("upstream_cluster").str.starts_with("outbound")
"""

WHOLE = (
    COMMON
    + """
scans = [pl.scan_csv(p, has_header=False, separator="\\x01", quote_char=None,
                     new_columns=["text"], schema_overrides={"text": pl.String}) for p in FILES]
# The side as a column, filtered on after: filtering on CLIENT itself would be pushed down
# into each scan, and the two plans would decode every line twice.
entries = pl.concat([decoded(scan, p.name) for scan, p in zip(scans, FILES)])
entries = entries.with_columns(client=CLIENT)
joined = entries.filter(pl.col("client")).join(
    entries.filter(~pl.col("client")), on="request_id", how="full", suffix="_s")
print(verdicts(joined).sort("n").collect())
"""
)

BOUNDED = (
    COMMON
    + """
BLOCK = int(sys.argv[4]) << 20

def blocks(path):
    rest = b""
    with path.open("rb") as handle:
        while data := rest + handle.read(BLOCK):
            cut = data.rfind(b"\\n") + 1 or len(data)
            yield pl.read_lines(data[:cut], name="text").lazy()
            rest = data[cut:]

def produce(out):
    readers = [(blocks(p), p.name) for p in FILES]
    while readers:
        parts, live = [], []
        for reader, name in readers:
            block = next(reader, None)
            if block is not None:
                parts.append(decoded(block, name))
                live.append((reader, name))
        readers = live
        if parts:
            out.put(pl.concat(parts).collect(engine="streaming"))
    out.put(None)

ahead = queue.Queue(maxsize=4)
threading.Thread(target=produce, args=(ahead,), daemon=True).start()
clients = servers = totals = None
while (entries := ahead.get()) is not None:
    c, s = entries.filter(CLIENT), entries.filter(~CLIENT)
    if clients is not None:
        c, s = pl.concat([clients, c]), pl.concat([servers, s])
    counts = verdicts(c.join(s, on="request_id", how="inner", suffix="_s"))
    clients = c.join(s, on="request_id", how="anti")
    servers = s.join(c, on="request_id", how="anti")
    if totals is not None:
        counts = pl.concat([totals, counts]).group_by(*GROUP).agg(
            pl.col("n").sum(), pl.col("request_id").list.explode().head(5))
    totals = counts
print(totals.sort("n"), clients.height, servers.height)
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Stand-in pipelines against the floor.")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block-mib", type=int, default=8, help="the bounded stand-in's blocks")
    args = parser.parse_args()
    data = exporter_vs_mtail.corpus(args.lines, "json")
    formats = default_formats().json
    integers = {f.key for fmt in formats for f in fmt.fields if f.value_type is ValueType.INT}
    stand_in = [str(data), ",".join(json_keys(formats)), ",".join(sorted(integers))]
    runs = {
        "polars floor (baseline)": [PY, "-c", POLARS_FLOOR, str(data)],
        "whole: one lazy query": [PY, "-c", WHOLE, *stand_in],
        "bounded: blocks, read-ahead": [PY, "-c", BOUNDED, *stand_in, str(args.block_mib)],
        "wslog analyze": [*WSLOG, "analyze", str(data)],
    }
    walls: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, float] = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeat):  # by turns: the machine's load hits every run alike
        for name, argv in runs.items():
            wall, peak = measure(name, argv)
            walls[name].append(wall)
            peaks[name] = max(peaks[name], peak)
    floor = min(walls["polars floor (baseline)"])
    print(f"input: {args.lines:,} JSON lines in {data}; best of {args.repeat} by turns")
    print(f"{'run':<30} {'wall s':>7} {'peak MiB':>9}  x floor")
    for name in runs:
        best = min(walls[name])
        print(f"{name:<30} {best:7.2f} {peaks[name]:9.0f}  {best / floor:.2f}x")


if __name__ == "__main__":
    main()
