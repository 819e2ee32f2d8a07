"""The protocol of each hop and the upgrade path two hops make (docs/design.md sections 1-2).

A WebSocket through the mesh crosses two HTTP hops: the app to its client sidecar, then the
client sidecar to the server sidecar. Each is ``Hop.H1`` or ``Hop.H2`` (Envoy's ``protocol``
``HTTP/1.x``, or ``HTTP/2``/``HTTP/3``), and the two make the ``UpgradePath``
``<app-to-client-sidecar>-<sidecar-to-sidecar>``. ``upgrade_path`` is its one spelling;
``hops`` splits it and ``path_of`` builds it from columns, both derived from it.
"""

from __future__ import annotations

import polars as pl

from analyzer.vocab import Hop, UpgradePath

# What a WebSocket client app speaks to its sidecar when no entry shows it: HTTP/1.1.
ASSUMED_APP_HOP = Hop.H1


def upgrade_path(app: Hop, mesh: Hop) -> UpgradePath:
    """The path of a WebSocket whose app hop is ``app`` and whose mesh hop is ``mesh``."""
    return UpgradePath(f"{app}-{mesh}")


_HOPS = {upgrade_path(app, mesh): (app, mesh) for app in Hop for mesh in Hop}


def hops(path: UpgradePath) -> tuple[Hop, Hop] | None:
    """The (app, mesh) hops of a path; None for ``unknown``."""
    return _HOPS.get(path)


def mesh_hop(path: UpgradePath) -> Hop | None:
    """The sidecar-to-sidecar hop of a path, the one configuration decides; None for
    ``unknown``."""
    both = hops(path)
    return both[1] if both else None


def protocol_hop(protocol: pl.Expr) -> pl.Expr:
    """The ``Hop`` an Envoy ``protocol`` (or ``%UPSTREAM_PROTOCOL%``) value names; null for
    none (TCP, or not logged)."""
    return (
        pl.when(protocol.str.starts_with("HTTP/1"))
        .then(pl.lit(Hop.H1.value))
        .when(protocol.is_in(["HTTP/2", "HTTP/3"]))
        .then(pl.lit(Hop.H2.value))
    )


def path_of(app: pl.Expr, mesh: pl.Expr) -> pl.Expr:
    """``upgrade_path`` over ``Hop`` columns: ``unknown`` unless both hops are known."""
    chain: pl.Expr = pl.lit(UpgradePath.UNKNOWN.value)
    for path, (first, second) in _HOPS.items():
        both = (app == first.value) & (mesh == second.value)
        chain = pl.when(both).then(pl.lit(path.value)).otherwise(chain)
    return chain
