"""Which Istio release holds which rule: the one table of version cutoffs the doctor applies.

istiod changed how it builds a client's cluster more than once; a configuration that upgrades on
one release keeps HTTP/1.1 on another. Every cutoff is here, with the Istio change that moved it
(read in Istio's history; the first release tag containing the commit), so a prediction can say
which release's rule decided. When the version is not known, the doctor predicts for
``CURRENT_RELEASE`` and asks ``eras`` for one representative of each range to name the releases
where the verdict would differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

Minor = tuple[int, int]
Patch = tuple[int, int, int]
VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")
CURRENT_RELEASE: Minor = (1, 30)


class VersionRule(StrEnum):
    H2_UPGRADE_POLICY = "h2UpgradePolicy (DestinationRule and mesh config)"
    SNIFFED_UPGRADE = "a DestinationRule's UPGRADE applies to sniffed ports"
    K8S_APP_PROTOCOL_H2C = "appProtocol kubernetes.io/h2c"
    K8S_APP_PROTOCOL_WS = "appProtocol kubernetes.io/ws, wss"
    ALLOW_CONNECT = "WebSocket over an HTTP/2 hop (allow_connect)"
    CLIENT_PROTOCOL_STOPS_UPGRADE = "useClientProtocol stops an h2UpgradePolicy upgrade"
    CLIENT_PROTOCOL_OVER_PORT = "useClientProtocol over an http2/grpc port"


@dataclass(frozen=True)
class Cutoff:
    rule: VersionRule
    since: Minor
    before: str  # what istiod did before ``since``
    source: str  # the Istio change that moved the rule
    backports: tuple[Patch, ...] = ()  # patch releases of older minors that hold it too


CUTOFFS = (
    Cutoff(
        VersionRule.H2_UPGRADE_POLICY,
        (1, 6),
        "h2UpgradePolicy was not applied",
        "istio/istio#21809 (commit 65db4113895, first in 1.6.0)",
    ),
    Cutoff(
        VersionRule.SNIFFED_UPGRADE,
        (1, 8),
        "only ports named HTTP were upgraded; a sniffed port follows the client",
        "istio/istio#27035 (commit b26ae68f7ff, first in 1.8.0)",
    ),
    Cutoff(
        VersionRule.ALLOW_CONNECT,
        (1, 12),
        "sidecars cannot carry a WebSocket over an HTTP/2 hop",
        "docs/design.md section 2",
    ),
    Cutoff(
        VersionRule.K8S_APP_PROTOCOL_H2C,
        (1, 19),
        "the value is not understood and the port is sniffed",
        "istio/istio#43988 (commit b6104494fde, first in 1.19.0)",
    ),
    Cutoff(
        VersionRule.K8S_APP_PROTOCOL_WS,
        (1, 24),
        "the value is not understood and the port is sniffed",
        "istio/istio#53164 (commit 2ea3753be92, ConvertProtocol, first in 1.24.0)",
    ),
    Cutoff(
        VersionRule.CLIENT_PROTOCOL_STOPS_UPGRADE,
        (1, 25),
        "an UPGRADE (rule or mesh-wide) still upgraded",
        "istio/istio#53876 (commit 194ab8c1b93, first in 1.25.0; backported to 1.22.7, "
        "1.23.4 and 1.24.2 by #54121, #54122, #54123)",
        backports=((1, 22, 7), (1, 23, 4), (1, 24, 2)),
    ),
    Cutoff(
        VersionRule.CLIENT_PROTOCOL_OVER_PORT,
        (1, 28),
        "the port's protocol forced HTTP/2 anyway",
        "istio/istio#57569 (commit 531c61709aa, first in 1.28.0)",
    ),
)
BY_RULE = {c.rule: c for c in CUTOFFS}


def minor_version(version: str | None) -> Minor | None:
    match = VERSION.match(version or "")
    return (int(match[1]), int(match[2])) if match else None


def patch_level(version: str | None) -> int | None:
    """The patch release of ``1.24.2`` (2); None when the version names none."""
    match = VERSION.match(version or "")
    return int(match[3]) if match and match[3] is not None else None


def _shown(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


@dataclass(frozen=True)
class IstioVersion:
    """The release whose rules apply: read from the configuration, or the current one."""

    minor: Minor
    text: str  # as read, or the current release's
    source: str  # where it was read; empty when it was not
    known: bool = True
    patch: int = 0  # a version without one (``1.24``) is taken as its first release

    def has(self, rule: VersionRule) -> bool:
        cutoff = BY_RULE[rule]
        backported = any(self.minor == b[:2] and self.patch >= b[2] for b in cutoff.backports)
        return self.minor >= cutoff.since or backported

    def says(self, rule: VersionRule) -> str:
        """Evidence: which release's rule decided, and where that release came from."""
        cutoff = BY_RULE[rule]
        when = f"Istio {'from' if self.has(rule) else 'before'} {_shown(cutoff.since)}"
        if self.has(rule) and self.minor < cutoff.since:
            when = f"Istio {self.minor[0]}.{self.minor[1]}.{self.patch} has the backport"
        what = "holds" if self.has(rule) else f"does not hold ({cutoff.before})"
        return f"rule '{rule}' {what}: {when}, {self.describe()}; {cutoff.source}"

    def describe(self) -> str:
        if not self.known:
            return f"Istio {self.text} assumed (the current release; version unknown)"
        return f"Istio {self.text} ({self.source})"


def resolve(version: str | None, source: str) -> IstioVersion:
    minor = minor_version(version)
    if version is None or minor is None:
        return IstioVersion(CURRENT_RELEASE, _shown(CURRENT_RELEASE), "", known=False)
    return IstioVersion(minor, version, source, patch=patch_level(version) or 0)


@dataclass(frozen=True)
class Era:
    """A range of releases in which no cutoff moves, and one release to stand for it."""

    first: Minor
    last: Minor | None  # None: up to the current release

    @property
    def label(self) -> str:
        if self.first == (0, 0):
            return f"< {_shown(_after(self.last))}"
        if self.last is None:
            return f">= {_shown(self.first)}"
        if self.first == self.last:
            return _shown(self.first)
        return f"{_shown(self.first)}-{_shown(self.last)}"

    def stand_in(self) -> IstioVersion:
        minor = self.first if self.first != (0, 0) else (1, 5)
        return IstioVersion(minor, _shown(minor), f"releases {self.label}")


def _after(minor: Minor | None) -> Minor:
    return (minor or CURRENT_RELEASE)[0], (minor or CURRENT_RELEASE)[1] + 1


def eras() -> tuple[Era, ...]:
    """Every range of releases between cutoffs, oldest first."""
    starts = sorted({c.since for c in CUTOFFS})
    bounds = [(0, 0), *starts]
    out = []
    for first, nxt in zip(bounds, [*starts, None], strict=True):
        last = (nxt[0], nxt[1] - 1) if nxt else None
        out.append(Era(first, last))
    return tuple(out)
