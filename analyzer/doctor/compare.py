"""Predicted beside observed: does the configuration explain what the access logs show?

Observations are ``wslog analyze``'s connections. They are matched to a prediction by
destination service and, when the client sidecar's cluster names it (``outbound|8080||host``,
``naming.service_port``), by port; and by subset where the log tells it (the cluster's third
field, ``outbound|8080|v1|host``, or the server's mTLS SNI ``outbound_.8080_.v1_.host``) and a
prediction row has that subset, else to every subset row of the port. Only the
sidecar-to-sidecar hop is compared (the app-to-sidecar half is the client's choice,
``hops.mesh_hop``), and the verdict: ``h2-connect-not-allowed`` observed means ``fail``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from analyzer import naming
from analyzer.doctor.model import Verdict
from analyzer.doctor.predict import Prediction
from analyzer.hops import mesh_hop
from analyzer.vocab import Cause, Outcome, UpgradePath


class Agreement(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    NOT_OBSERVED = "not-observed"


@dataclass(frozen=True)
class Observation:
    service: str
    port: int | None
    upgrade_path: UpgradePath
    outcome: Outcome
    cause: Cause
    subset: str | None = None  # "": the cluster names no subset; None: the log does not tell


@dataclass(frozen=True)
class Observed:
    """What the logs show for one service (and port)."""

    service: str
    port: int | None
    connections: int
    upgrade_paths: tuple[UpgradePath, ...]
    verdict: Verdict
    connect_failures: int

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "port": self.port,
            "connections": self.connections,
            "upgrade_paths": [p.value for p in self.upgrade_paths],
            "verdict": self.verdict.value,
            "h2_connect_not_allowed": self.connect_failures,
        }


@dataclass(frozen=True)
class Comparison:
    prediction: Prediction
    observed: Observed | None
    agreement: Agreement
    disagreements: tuple[str, ...]


def compare(
    predictions: Sequence[Prediction], observations: Sequence[Observation]
) -> tuple[list[Comparison], list[Observed]]:
    """Each prediction with what was observed for it, and observed services nothing predicts."""
    subsets: dict[tuple[str, int], set[str]] = {}
    for p in predictions:
        subsets.setdefault((p.service, p.port), set()).add(p.subset or "")
    comparisons = [_compare_one(p, _matching(p, observations, subsets)) for p in predictions]
    predicted = {p.service for p in predictions}
    strays = [o for o in observations if o.service not in predicted]
    keys = sorted({(o.service, o.port) for o in strays}, key=lambda k: (k[0], k[1] or 0))
    unexplained = [
        _summarise(service, port, [o for o in strays if (o.service, o.port) == (service, port)])
        for service, port in keys
    ]
    return comparisons, unexplained


def _matching(
    prediction: Prediction,
    observations: Iterable[Observation],
    subsets: Mapping[tuple[str, int], set[str]],
) -> list[Observation]:
    return [
        o
        for o in observations
        if o.service == prediction.service
        and o.port in (None, prediction.port)
        and _same_subset(o, prediction, subsets.get((prediction.service, prediction.port), set()))
    ]


def _same_subset(observation: Observation, prediction: Prediction, predicted: set[str]) -> bool:
    """The observation's subset is the row's, or the log does not tell one a row predicts."""
    if observation.subset is None or observation.subset not in predicted:
        return True
    return observation.subset == (prediction.subset or "")


def _summarise(service: str, port: int | None, seen: Sequence[Observation]) -> Observed:
    paths = tuple(
        sorted({o.upgrade_path for o in seen if o.upgrade_path is not UpgradePath.UNKNOWN})
    )
    failures = sum(1 for o in seen if o.cause is Cause.H2_CONNECT_NOT_ALLOWED)
    verdict = Verdict.FAIL if failures else Verdict.OK
    return Observed(service, port, len(seen), paths, verdict, failures)


def unpredicted_failures(
    comparisons: Sequence[Comparison], observed_only: Sequence[Observed]
) -> list[Observed]:
    """Failures the logs show where the configuration predicts none: the disagreement that must
    fail a gate. (A predicted failure the logs do not show fails the gate by its prediction.)"""
    seen = [c.observed for c in comparisons if c.prediction.verdict is Verdict.OK]
    return [o for o in (*seen, *observed_only) if o is not None and o.verdict is Verdict.FAIL]


def _compare_one(prediction: Prediction, seen: Sequence[Observation]) -> Comparison:
    if not seen:
        return Comparison(prediction, None, Agreement.NOT_OBSERVED, ())
    observed = _summarise(prediction.service, prediction.port, seen)
    problems = [
        *_hop_disagreement(prediction, observed),
        *_verdict_disagreement(prediction, observed),
    ]
    agreement = Agreement.DISAGREE if problems else Agreement.AGREE
    return Comparison(prediction, observed, agreement, tuple(problems))


def _hop_disagreement(prediction: Prediction, observed: Observed) -> list[str]:
    wanted = mesh_hop(prediction.upgrade_path)
    other = [p for p in observed.upgrade_paths if mesh_hop(p) is not wanted]
    if not other:
        return []
    shown = ", ".join(p.value for p in other)
    return [f"predicted {prediction.upgrade_path}, observed {shown}"]


def _verdict_disagreement(prediction: Prediction, observed: Observed) -> list[str]:
    if prediction.verdict is observed.verdict:
        return []
    if prediction.verdict is Verdict.OK:
        return [
            f"predicted ok, observed {observed.connect_failures} connection(s) failing with "
            f"{Cause.H2_CONNECT_NOT_ALLOWED}"
        ]
    return [
        f"predicted {Cause.H2_CONNECT_NOT_ALLOWED}, observed {observed.connections} "
        f"connection(s) without it"
    ]


# -- from wslog analyze's connections frame ---------------------------------------------------


def observations(connections: pl.DataFrame) -> list[Observation]:
    """``AnalysisResult.connections`` rows as observations."""
    cluster = pl.col("client").struct.field("upstream_cluster")
    port = naming.service_port(cluster)
    rows = connections.select(
        "destination_service",
        "upgrade_path",
        "outcome",
        "cause",
        port.alias("port"),
        _subset(cluster, pl.col("server").struct.field("requested_server_name")).alias("subset"),
    ).iter_rows(named=True)
    return [
        Observation(
            service=str(row["destination_service"] or ""),
            port=row["port"],
            upgrade_path=UpgradePath(row["upgrade_path"]),
            outcome=Outcome(row["outcome"]),
            cause=Cause(row["cause"] or ""),
            subset=row["subset"],
        )
        for row in rows
    ]


def _subset(cluster: pl.Expr, sni: pl.Expr) -> pl.Expr:
    """The subset field of the client's ``outbound|PORT|SUBSET|HOST`` cluster (the fields
    ``naming`` reads it by), else of the server's SNI ``outbound_.PORT_.SUBSET_.HOST`` (``_``: no
    subset); null when neither is there."""
    from_cluster = cluster.str.split("|").list.get(2, null_on_oob=True)
    from_sni = sni.str.split("_.").list.get(2, null_on_oob=True).replace("_", "")
    return (
        pl.when(naming.service_port(cluster).is_not_null())
        .then(from_cluster)
        .when(naming.sni_service(sni).is_not_null())
        .then(from_sni)
    )
