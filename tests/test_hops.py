"""The protocol of a hop and the upgrade path two hops make, spelled once (``analyzer.hops``):
the classifier's column expressions, the doctor's predictions and its comparison agree."""

from __future__ import annotations

import polars as pl
import pytest

from analyzer.hops import hops, mesh_hop, path_of, protocol_hop, upgrade_path
from analyzer.vocab import Hop, UpgradePath


def test_every_known_path_is_its_two_hops_and_unknown_has_none() -> None:
    for path in UpgradePath:
        both = hops(path)
        if path is UpgradePath.UNKNOWN:
            assert both is None
            assert mesh_hop(path) is None
        else:
            assert both is not None
            assert upgrade_path(*both) is path
            assert mesh_hop(path) is both[1]


def test_the_column_expression_spells_paths_as_the_function_does() -> None:
    values = [None, Hop.H1.value, Hop.H2.value]
    pairs = pl.DataFrame(
        [(app, mesh) for app in values for mesh in values],
        schema={"app": pl.String, "mesh": pl.String},
        orient="row",
    )
    got = pairs.select(path_of(pl.col("app"), pl.col("mesh"))).to_series().to_list()
    want = [
        upgrade_path(Hop(app), Hop(mesh)) if app and mesh else UpgradePath.UNKNOWN
        for app, mesh in pairs.iter_rows()
    ]
    assert got == want


@pytest.mark.parametrize(
    ("protocol", "hop"),
    [
        ("HTTP/1.0", Hop.H1),
        ("HTTP/1.1", Hop.H1),
        ("HTTP/2", Hop.H2),
        ("HTTP/3", Hop.H2),
        (None, None),  # a TCP entry, or a format without the field
    ],
)
def test_envoys_protocol_names_the_hop(protocol: str | None, hop: Hop | None) -> None:
    frame = pl.DataFrame({"protocol": [protocol]}, schema={"protocol": pl.String})
    assert frame.select(protocol_hop(pl.col("protocol"))).item() == hop
