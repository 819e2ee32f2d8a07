"""Names the mesh gives things (``analyzer.naming``): the Service port of an Istio cluster."""

from __future__ import annotations

import polars as pl
import pytest

from analyzer.naming import service_port


@pytest.mark.parametrize(
    ("cluster", "port"),
    [
        ("outbound|8080||websockets-server.default.svc.cluster.local", 8080),
        ("outbound|443|v1|shop.default.svc.cluster.local", 443),
        ("outbound|8080||", 8080),
        ("inbound|80||", None),  # the app's port, not the Service's
        ("inbound|8080|http|shop.default.svc.cluster.local", None),
        ("outbound|http|v1|shop", None),
        ("outbound|8080|", None),
        ("PassthroughCluster", None),
        (None, None),
    ],
)
def test_the_service_port_comes_from_an_outbound_cluster_only(
    cluster: str | None, port: int | None
) -> None:
    frame = pl.DataFrame({"cluster": [cluster]}, schema={"cluster": pl.String})
    assert frame.select(service_port(pl.col("cluster"))).item() == port
