"""The partition key (analyzer/partition.py) keeps every connection whole: splitting the lab's
real Envoy captures by key and analysing each part alone finds exactly the connections the
whole input gives, with the lab's addresses as they are (all 127.0.0.1) and moved onto distinct
pod IPs as a cluster shows them (then the key really separates clients)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from analyzer.formats import default_formats
from analyzer.framing import Deframer
from analyzer.partition import BY_ADDRESS, BY_REQUEST, line_keys, mesh_host, subject_token
from tests.conftest import TESTDATA
from tests.test_exporter import analysed_connections

PARTS = 3
ADDRESSES = ("upstream_local_address", "downstream_remote_address", "downstream_local_address")


def keys_of(path: Path) -> list[str]:
    framed = Deframer(str(path)).feed_lines(path.read_text().splitlines())
    assert framed.rejects.height == 0
    return line_keys(framed.lines, default_formats()).get_column("partition_key").to_list()


def split(root: Path, out: Path) -> Counter[str]:
    """Each line of ``root/*/*.log`` into ``out/p<k>/<scenario>/<file>`` by its key; the kinds
    of key used."""
    kinds: Counter[str] = Counter()
    for log in sorted(root.glob("*/*.log")):
        lines = log.read_text().splitlines()
        keys = keys_of(log)
        assert len(keys) == len(lines)
        parts: dict[int, list[str]] = {}
        for line, key in zip(lines, keys, strict=True):
            kinds[key.split(":", 1)[0]] += 1
            parts.setdefault(int(subject_token(key), 16) % PARTS, []).append(line)
        for k, part in parts.items():
            target = out / f"p{k}" / log.parent.name / log.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(part) + "\n")
    return kinds


def assert_parts_find_the_whole(root: Path, out: Path) -> None:
    whole, _ = analysed_connections(sorted(str(p) for p in root.glob("*/*.log")))
    together: Counter[tuple[str, ...]] = Counter()
    for part in sorted(out.glob("p*")):
        found, _ = analysed_connections(sorted(str(p) for p in part.glob("*/*.log")))
        together += found
    assert together == whole
    assert any("h2-connect-not-allowed" in labels for labels in whole)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_lab_captures_split_by_key_give_the_connections_of_the_whole(
    tmp_path: Path, fmt: str
) -> None:
    root = TESTDATA / "lab" / fmt
    kinds = split(root, tmp_path)
    assert_parts_find_the_whole(root, tmp_path)
    assert kinds[BY_ADDRESS.rstrip(":")] and kinds[BY_REQUEST.rstrip(":")]


def relocate(entry: dict[str, object], own_ip: str, client_ip: str, server_ip: str) -> None:
    """Put a lab entry on pod IPs: the writer's own addresses on ``own_ip``, the upstream host
    on ``server_ip`` (client side), the peer of a server's connection on ``client_ip``."""
    for field in (*ADDRESSES, "upstream_host"):
        value = entry.get(field)
        if not isinstance(value, str) or not value.startswith("127.0.0.1:"):
            continue  # null, or a forwarded address (port 0) the gateway put there
        port = value.rsplit(":", 1)[1]
        ip = own_ip
        if field == "upstream_host" and own_ip == client_ip:
            ip = server_ip
        elif field == "downstream_remote_address" and own_ip == server_ip:
            ip = client_ip
        entry[field] = f"{ip}:{port}"


def lab_on_pod_ips(client_dir: Path, server_dir: Path) -> None:
    """The lab's JSON captures moved onto pod IPs (``relocate``: scenario i's client on
    10.1.0.i, its server on 10.2.0.i), written as ``DIR/<scenario>/client.log`` under
    ``client_dir`` and ``.../server.log`` under ``server_dir``."""
    for i, scenario in enumerate(sorted((TESTDATA / "lab" / "json").iterdir())):
        client_ip, server_ip = f"10.1.0.{i + 1}", f"10.2.0.{i + 1}"
        for side, own, out in (
            ("client", client_ip, client_dir),
            ("server", server_ip, server_dir),
        ):
            entries = [
                json.loads(line) for line in (scenario / f"{side}.log").read_text().splitlines()
            ]
            for entry in entries:
                relocate(entry, own, client_ip, server_ip)
            target = out / scenario.name / f"{side}.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_lab_captures_on_pod_ips_split_by_client_pod(tmp_path: Path) -> None:
    """Every scenario's client on its own IP, its server on another: the connections still
    match the whole, and sidecar-to-sidecar traffic keys by the client's IP."""
    moved = tmp_path / "moved"
    lab_on_pod_ips(moved, moved)
    split(moved, tmp_path / "parts")
    assert_parts_find_the_whole(moved, tmp_path / "parts")
    h2_refused = moved / "h2-no-allow-connect"
    client_ip = json.loads((h2_refused / "client.log").read_text())["upstream_local_address"]
    keys = {keys_of(h2_refused / "client.log")[0], keys_of(h2_refused / "server.log")[0]}
    assert keys == {BY_ADDRESS + client_ip.split(":")[0]}
    for scenario in moved.iterdir():  # start, periodic and final entries, retries: one key
        if not scenario.name.startswith("gateway"):
            keys = {*keys_of(scenario / "client.log"), *keys_of(scenario / "server.log")}
            assert len(keys) == 1, scenario.name
    gateway = moved / "gateway-h1"
    assert {k.split(":")[0] for k in keys_of(gateway / "client.log")} == {"rid"}


def test_mesh_host_takes_the_host_of_v4_v6_and_null() -> None:
    addresses = pl.Series(["10.0.0.7:5432", "[fd00::1]:80", None, "192.0.2.2:0"])
    hosts = pl.select(mesh_host(pl.lit(addresses))).to_series().to_list()
    assert hosts == ["10.0.0.7", "fd00::1", None, "192.0.2.2"]


def test_subject_token_is_a_safe_nats_token() -> None:
    token = subject_token("rid:a.b *>\u00e9")
    assert len(token) == 16 and all(c in "0123456789abcdef" for c in token)
    assert token == subject_token("rid:a.b *>\u00e9")


REAL = sorted(
    [*(TESTDATA / "real-world").glob("*.log"), *(TESTDATA / "istio-text-generations").glob("*.log")]
)


@pytest.mark.parametrize("log", REAL, ids=[p.name for p in REAL])
def test_real_world_lines_split_by_key_give_the_connections_of_the_whole(
    tmp_path: Path, log: Path
) -> None:
    """Lines other Envoys wrote (ambient, gateways, custom formats, every Istio TEXT generation)."""
    lines, keys = log.read_text().splitlines(), keys_of(log)
    for line, key in zip(lines, keys, strict=True):
        part = tmp_path / f"p{int(subject_token(key), 16) % PARTS}" / log.name
        part.parent.mkdir(exist_ok=True)
        with part.open("a") as out:
            out.write(line + "\n")
    whole, _ = analysed_connections([str(log)])
    together: Counter[tuple[str, ...]] = Counter()
    for part in tmp_path.glob("p*/*.log"):
        together += analysed_connections([str(part)])[0]
    assert together == whole
