"""Istio's rules, as istiod applies them when it configures sidecars.

- A Service port's protocol: ``appProtocol`` over the port name's prefix (``http2-ws`` is
  HTTP2), UDP by transport, well-known ports as TCP, otherwise unsupported (sniffed).
- Which DestinationRule a client sidecar uses for a host: the client's namespace first, then
  the Service's namespace (rules exported to the client), then the root namespace; within a
  namespace the most specific host wins (exact over the longest wildcard); several rules for
  the same host merge and the oldest one's trafficPolicy is kept. Port-level settings replace
  the rule's connection pool for that port.
- Which EnvoyFilter patches reach a server workload's inbound connection manager: its own
  namespace or the root namespace, ``workloadSelector`` labels a subset of the pod's labels,
  context SIDECAR_INBOUND or ANY, ``proxyVersion`` (a regular expression) matching the version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from analyzer.doctor.model import (
    DEFAULT_DOMAIN,
    ConnectPatch,
    DestinationRule,
    EnvoyFilter,
    HttpPool,
    MeshSettings,
    PatchContext,
    Protocol,
    ServicePort,
)

APP_PROTOCOLS = {
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.HTTPS,
}
PROTOCOL_NAMES = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "http_proxy": Protocol.HTTP_PROXY,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.GRPC_WEB,
    "https": Protocol.HTTPS,
    "tcp": Protocol.TCP,
    "tls": Protocol.TLS,
    "udp": Protocol.UDP,
    "mongo": Protocol.MONGO,
    "mysql": Protocol.MYSQL,
    "redis": Protocol.REDIS,
}
WELL_KNOWN_TCP_PORTS = frozenset({22, 25, 3306, 27017})
VERSION = re.compile(r"^v?(\d+)\.(\d+)")
RuleFilter = Callable[[DestinationRule], bool]


# -- ports ------------------------------------------------------------------------------------


def port_protocol(port: ServicePort) -> tuple[Protocol, str]:
    """The port's protocol and what decided it (for the evidence)."""
    if port.transport.upper() == "UDP":
        return Protocol.UDP, "protocol: UDP"
    name, what = port.name, f"port name {port.name!r}"
    if port.app_protocol:
        name, what = port.app_protocol, f"appProtocol {port.app_protocol!r}"
        if name in APP_PROTOCOLS:
            return APP_PROTOCOLS[name], what
    lowered = name.lower()
    if lowered.startswith("grpc-web"):
        return Protocol.GRPC_WEB, what
    protocol = PROTOCOL_NAMES.get(lowered.split("-", 1)[0], Protocol.UNSUPPORTED)
    if protocol is Protocol.UNSUPPORTED and port.port in WELL_KNOWN_TCP_PORTS:
        return Protocol.TCP, f"well-known port {port.port}"
    return protocol, what if name else "an unnamed port"


# -- hosts ------------------------------------------------------------------------------------


def fqdn(name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"


def resolve_host(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """A rule's host as Istio reads it: a name without a dot is short for the rule's namespace."""
    if host == "*" or "." in host or ":" in host:
        return host
    return fqdn(host, namespace, domain)


def host_matches(pattern: str, hostname: str) -> bool:
    if pattern == "*" or pattern == hostname:
        return True
    return pattern.startswith("*.") and hostname.endswith(pattern[1:])


def most_specific(patterns: Iterable[str], hostname: str) -> str | None:
    """An exact match, else the longest matching wildcard."""
    matching = [p for p in set(patterns) if host_matches(p, hostname)]
    if hostname in matching:
        return hostname
    return max(matching, key=lambda p: (len(p), p), default=None)


# -- DestinationRules -------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleChoice:
    """The DestinationRule(s) a client sidecar applies to a host, and why."""

    rule: DestinationRule | None
    http: HttpPool | None  # the effective connectionPool.http for the port
    notes: tuple[str, ...] = ()
    port_level: bool = False
    found: str = ""  # the rule, its host and where the lookup found it


def choose_rule(
    rules: Sequence[DestinationRule],
    hostname: str,
    service_ns: str,
    client_ns: str,
    mesh: MeshSettings,
    port: int,
    domain: str = DEFAULT_DOMAIN,
) -> RuleChoice:
    usable = [r for r in rules if r.workload_selector is None]
    notes = [
        f"{r.ref} has a workloadSelector: it applies only to the client workloads it selects "
        "and is not considered"
        for r in rules
        if r.workload_selector is not None
        and host_matches(resolve_host(r.host, r.namespace, domain), hostname)
    ]
    candidates, where = _candidates(usable, hostname, service_ns, client_ns, mesh, domain)
    if not candidates:
        return RuleChoice(None, None, tuple(notes))
    ordered = sorted(candidates, key=lambda r: (r.created, r.name, r.namespace))
    winner = next((r for r in ordered if r.has_traffic_policy), ordered[0])
    notes.extend(_conflicts(ordered, winner, port))
    notes.extend(_shadowed(usable, winner, hostname, domain))
    http, port_level = effective_pool(winner, port)
    level = " portLevelSettings" if port_level else ""
    found = f"{winner.ref}{level} (host {winner.host!r} in {where})"
    return RuleChoice(winner, http, tuple(notes), port_level, found)


def _candidates(
    rules: Sequence[DestinationRule],
    hostname: str,
    service_ns: str,
    client_ns: str,
    mesh: MeshSettings,
    domain: str,
) -> tuple[list[DestinationRule], str]:
    everywhere: RuleFilter = lambda r: True  # noqa: E731 - a named predicate reads best here
    local: RuleFilter = lambda r: _local(r, mesh)  # noqa: E731
    exported: RuleFilter = lambda r: _exported(r, mesh)  # noqa: E731
    visible = _visible_to(client_ns, mesh)
    steps: list[tuple[str, RuleFilter, RuleFilter, str]] = [
        (client_ns, local, everywhere, "the client's namespace"),
        (service_ns, exported, visible, "the Service's namespace"),
        (mesh.root_namespace, exported, visible, "the root namespace"),
    ]
    for namespace, in_pool, shown_to_client, where in steps:
        pool = [r for r in rules if r.namespace == namespace and in_pool(r)]
        best = most_specific((resolve_host(r.host, r.namespace, domain) for r in pool), hostname)
        chosen = [r for r in pool if resolve_host(r.host, r.namespace, domain) == best]
        shown = [r for r in chosen if shown_to_client(r)]
        if shown:
            return shown, where
    return [], ""


def _export(rule: DestinationRule, mesh: MeshSettings) -> tuple[str, ...]:
    return rule.export_to or mesh.default_dr_export_to


def _local(rule: DestinationRule, mesh: MeshSettings) -> bool:
    export = _export(rule, mesh)
    return any(e in ("*", ".", rule.namespace) for e in export)


def _exported(rule: DestinationRule, mesh: MeshSettings) -> bool:
    return any(e not in (".", "~") for e in _export(rule, mesh))


def _visible_to(client_ns: str, mesh: MeshSettings) -> RuleFilter:
    def visible(rule: DestinationRule) -> bool:
        export = _export(rule, mesh)
        return "*" in export or client_ns in export

    return visible


def effective_pool(rule: DestinationRule, port: int) -> tuple[HttpPool | None, bool]:
    """The rule's connectionPool.http for ``port``. A portLevelSettings entry for the port
    replaces the rule-level settings and inherits nothing (Istio's documented behaviour): what it
    leaves out takes Istio's defaults."""
    for policy in rule.port_policies:
        if policy.port == port:
            return policy.http, True
    return rule.http, False


def _conflicts(ordered: Sequence[DestinationRule], winner: DestinationRule, port: int) -> list[str]:
    others = [r for r in ordered if r is not winner and r.has_traffic_policy]
    mine = effective_pool(winner, port)[0]
    return [
        f"conflict: {r.ref} also sets a trafficPolicy for host {r.host!r}"
        f"{' with different connectionPool.http' if effective_pool(r, port)[0] != mine else ''}; "
        f"Istio keeps the oldest rule's ({winner.ref}) and ignores it"
        for r in others
    ]


def _shadowed(
    rules: Sequence[DestinationRule], winner: DestinationRule, hostname: str, domain: str
) -> list[str]:
    chosen = resolve_host(winner.host, winner.namespace, domain)
    return [
        f"{r.ref} (host {r.host!r}) also matches but is not applied: {winner.ref} "
        "is more specific or comes first in the lookup order"
        for r in rules
        if r is not winner
        and resolve_host(r.host, r.namespace, domain) != chosen
        and host_matches(resolve_host(r.host, r.namespace, domain), hostname)
    ]


# -- EnvoyFilters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchCheck:
    """One allow_connect patch considered for a workload: does it apply, and why (not)."""

    envoy_filter: EnvoyFilter
    patch: ConnectPatch
    applies: bool
    reason: str

    @property
    def ref(self) -> str:
        return f"{self.envoy_filter.ref} (configPatches[{self.patch.index}])"


def check_patches(
    filters: Sequence[EnvoyFilter],
    namespace: str,
    labels: Mapping[str, str],
    root_ns: str,
    version: str | None,
    target_port: int | None,
) -> list[PatchCheck]:
    """Every allow_connect patch in the workload's or the root namespace, in Istio's order of
    application (priority, root namespace first, creation time, name)."""
    scoped = [f for f in filters if f.namespace in (namespace, root_ns)]
    ordered = sorted(
        scoped,
        key=lambda f: (f.priority, f.namespace != root_ns, f.created, f.namespace, f.name),
    )
    return [_check(f, p, labels, version, target_port) for f in ordered for p in f.patches]


def _check(
    ef: EnvoyFilter,
    patch: ConnectPatch,
    labels: Mapping[str, str],
    version: str | None,
    target_port: int | None,
) -> PatchCheck:
    selector = ef.workload_selector or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return PatchCheck(
            ef, patch, False, f"its workloadSelector ({shown}) does not select the pods"
        )
    if patch.context not in (PatchContext.SIDECAR_INBOUND, PatchContext.ANY):
        return PatchCheck(
            ef, patch, False, f"context {patch.context} does not patch the inbound listener"
        )
    if (
        patch.port_number is not None
        and target_port is not None
        and patch.port_number != target_port
    ):
        return PatchCheck(
            ef, patch, False, f"listener portNumber {patch.port_number} is not the target port"
        )
    return _check_version(ef, patch, version)


def _check_version(ef: EnvoyFilter, patch: ConnectPatch, version: str | None) -> PatchCheck:
    wanted = patch.proxy_version
    if wanted is None:
        return PatchCheck(ef, patch, True, "applies")
    if version is None:
        return PatchCheck(
            ef, patch, True, f"applies if proxyVersion '{wanted}' matches (Istio version unknown)"
        )
    try:
        matched = re.search(wanted, version) is not None
    except re.error:
        return PatchCheck(ef, patch, False, f"proxyVersion '{wanted}' is not a valid expression")
    if not matched:
        return PatchCheck(ef, patch, False, f"proxyVersion '{wanted}' does not match {version}")
    return PatchCheck(ef, patch, True, f"applies (proxyVersion '{wanted}' matches {version})")


def allow_connect(checks: Sequence[PatchCheck]) -> PatchCheck | None:
    """The last applying patch decides (later MERGEs override earlier ones); None: unset."""
    applying = [c for c in checks if c.applies]
    return applying[-1] if applying else None


# -- versions ---------------------------------------------------------------------------------


def minor_version(version: str | None) -> tuple[int, int] | None:
    match = VERSION.match(version or "")
    return (int(match[1]), int(match[2])) if match else None
