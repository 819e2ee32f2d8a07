"""What correlation reads from a format, and what it guesses when a format does not log it.

A format without these fields still decodes, and the report looks as confident as ever: the
pairing and the sides are guessed instead (``analyzer.correlate``, ``analyzer.side``). So the
user is told, before a run, which guesses their ``--log-format`` forces.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyzer.formats import Format

_BY_ADDRESS = (
    "an entry without a request id (a rejected extended CONNECT) is not matched to the client "
    "entry whose connection it received, and shows as one-sided"
)


@dataclass(frozen=True)
class Need:
    """An ENTRY column correlation reads, the operator that logs it, and the guess without it."""

    column: str
    operator: str
    guess: str


NEEDS = (
    Need(
        "request_id",
        "%REQ(X-REQUEST-ID)%",
        "both sidecars' entries of a connection are paired by address and start time only, "
        "and several streams with one request id cannot be told apart",
    ),
    Need(
        "upstream_cluster",
        "%UPSTREAM_CLUSTER_RAW% (or %UPSTREAM_CLUSTER%)",
        "which sidecar wrote an entry is guessed from its SNI, its bind address, its partner "
        "entries or the pod it came from",
    ),
    Need("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%", _BY_ADDRESS),
    Need("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%", _BY_ADDRESS),
)


def missing(fmt: Format) -> tuple[Need, ...]:
    """The needs ``fmt`` does not log, in the order of ``NEEDS``."""
    columns = fmt.columns()
    return tuple(need for need in NEEDS if need.column not in columns)


def warnings(fmt: Format) -> list[str]:
    """One line per guess ``fmt`` forces, naming the operators that would avoid it."""
    lacking: dict[str, list[str]] = {}
    for need in missing(fmt):
        lacking.setdefault(need.guess, []).append(need.operator)
    return [
        f"--log-format has no {' and no '.join(operators)}, so {guess}."
        for guess, operators in lacking.items()
    ]
