"""Istio's rules, as istiod applies them when it configures sidecars.

- A Service port's protocol: ``appProtocol`` over the port name's prefix (``http2-ws`` is
  HTTP2), UDP by transport, well-known ports as TCP, otherwise unsupported (sniffed).
- Which DestinationRule a client sidecar uses for a host: the client's namespace first, then
  the Service's namespace (rules exported to the client), then the root namespace; within a
  namespace the most specific host wins (exact over the longest wildcard); several rules for
  the same host merge and the oldest one's trafficPolicy is kept. Port-level settings replace
  the rule's connection pool for that port.
- A subset's traffic policy: the rule's (port-level over rule-level), then the subset's
  ``connectionPool`` replaces it, and the subset's own ``portLevelSettings`` for the port replace
  both (Istio's ``MergeSubsetTrafficPolicy``).
- Which subsets a client's VirtualService sends a host's traffic to (``gateways`` empty or
  ``mesh``; the oldest rule for a host wins).
- Which EnvoyFilter patches reach a proxy: its own namespace or the root namespace,
  ``workloadSelector`` labels a subset of the pod's labels, the context of the proxy (a sidecar's
  inbound or outbound listeners, a gateway's), ``proxyVersion`` (a regular expression) matching
  the version, and the ``istio.io/rev`` label of the proxy's control plane.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from analyzer.doctor.model import (
    DEFAULT_DOMAIN,
    ClusterPatch,
    ConnectPatch,
    DestinationRule,
    EnvoyFilter,
    GatewaySelector,
    HttpPool,
    MeshSettings,
    PatchContext,
    Protocol,
    ProxyKind,
    ServicePort,
    Subset,
    VirtualService,
)
from analyzer.doctor.versions import IstioVersion, VersionRule

APP_PROTOCOLS = {  # the protocol each means, and the rule that says from when Istio knows it
    "kubernetes.io/h2c": (Protocol.HTTP2, VersionRule.K8S_APP_PROTOCOL_H2C),
    "kubernetes.io/ws": (Protocol.HTTP, VersionRule.K8S_APP_PROTOCOL_WS),
    "kubernetes.io/wss": (Protocol.HTTPS, VersionRule.K8S_APP_PROTOCOL_WS),
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
RuleFilter = Callable[[DestinationRule], bool]


# -- ports ------------------------------------------------------------------------------------


def port_protocol(port: ServicePort, version: IstioVersion | None = None) -> tuple[Protocol, str]:
    """The port's protocol and what decided it (for the evidence). ``kubernetes.io/*``
    appProtocols are understood only from the release ``versions`` names (current if None)."""
    if port.transport.upper() == "UDP":
        return Protocol.UDP, "protocol: UDP"
    if port.declared:
        declared = PROTOCOL_NAMES.get(port.declared.lower(), Protocol.UNSUPPORTED)
        return declared, f"ServiceEntry port protocol {port.declared!r}"
    name, what = port.name, f"port name {port.name!r}"
    if port.app_protocol:
        name, what = port.app_protocol, f"appProtocol {port.app_protocol!r}"
        if name in APP_PROTOCOLS:
            known, rule = APP_PROTOCOLS[name]
            if version is None or version.has(rule):
                return known, what
            what += f" ({version.says(rule)})"
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
    subset: Subset | None = None  # the subset whose policy decided, if it set one


def choose_rule(
    rules: Sequence[DestinationRule],
    hostname: str,
    service_ns: str,
    client_ns: str,
    mesh: MeshSettings,
    port: int,
    domain: str = DEFAULT_DOMAIN,
    subset: str | None = None,
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
    choice = RuleChoice(winner, http, tuple(notes), port_level, found)
    return with_subset(choice, winner, subset, port) if subset else choice


def with_subset(choice: RuleChoice, rule: DestinationRule, name: str, port: int) -> RuleChoice:
    """The subset's policy over the rule's: its connectionPool replaces the rule's, and its
    portLevelSettings for the port replace both."""
    subset = next((s for s in rule.subsets if s.name == name), None)
    if subset is None:
        note = f"subset {name!r} is not defined in {rule.ref}: Istio has no cluster for the route"
        return replace(choice, notes=(*choice.notes, note))
    at_port = next((p for p in subset.port_policies if p.port == port), None)
    if at_port is not None:
        found = f"{rule.ref} subset {name!r} portLevelSettings (over the rule's)"
        return replace(choice, http=at_port.http, port_level=True, found=found, subset=subset)
    if subset.pool_set:
        found = f"{rule.ref} subset {name!r} (its connectionPool replaces the rule's)"
        return replace(choice, http=subset.http, port_level=False, found=found, subset=subset)
    return replace(choice, found=f"{choice.found}, inherited by subset {name!r}")


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


# -- gateways ---------------------------------------------------------------------------------

GATEWAY_LABELS = {"istio": ("ingressgateway", "egressgateway")}
GATEWAY_LABEL_KEYS = ("istio.io/gateway-name", "gateway.istio.io/managed")


def gateway_labels(labels: Mapping[str, str]) -> bool:
    """Labels only gateway pods carry: Istio's charts' ``istio: ingressgateway`` and the labels of
    gateways deployed for Gateway API resources."""
    if any(labels.get(k) in v for k, v in GATEWAY_LABELS.items()):
        return True
    return any(k in labels for k in GATEWAY_LABEL_KEYS)


def gateway_selects(gateway: GatewaySelector, labels: Mapping[str, str]) -> bool:
    """An Istio Gateway's non-empty selector selects pods in any namespace (Istio's default)."""
    return bool(gateway.selector) and all(labels.get(k) == v for k, v in gateway.selector.items())


# -- VirtualServices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """The subsets a client's traffic for a host and port goes to (None: no subset)."""

    subsets: tuple[str | None, ...]
    said: str = ""


def route_subsets(
    services: Sequence[VirtualService],
    hostname: str,
    client_ns: str,
    port: int,
    domain: str = DEFAULT_DOMAIN,
) -> Routing:
    """The oldest VirtualService a client sidecar applies to the host; the subsets of its
    routes whose destination is the host (and the port, when a route names one)."""
    matching = [
        v
        for v in services
        if _for_sidecars(v)
        and _shown_to(v, client_ns)
        and any(host_matches(resolve_host(h, v.namespace, domain), hostname) for h in v.hosts)
    ]
    if not matching:
        return Routing((None,))
    chosen = min(matching, key=lambda v: (v.created, v.namespace, v.name))
    subsets = tuple(
        dict.fromkeys(
            d.subset
            for d in chosen.destinations
            if resolve_host(d.host, chosen.namespace, domain) == hostname and d.port in (None, port)
        )
    )
    if not subsets or subsets == (None,):
        return Routing((None,))
    shown = ", ".join(repr(s) if s else "no subset" for s in subsets)
    return Routing(subsets, f"{chosen.ref} routes the host's traffic to subset(s) {shown}")


def _for_sidecars(service: VirtualService) -> bool:
    return not service.gateways or "mesh" in service.gateways


def _shown_to(service: VirtualService, client_ns: str) -> bool:
    export = service.export_to or ("*",)
    return (
        "*" in export or client_ns in export or ("." in export and service.namespace == client_ns)
    )


# -- EnvoyFilters -----------------------------------------------------------------------------

INBOUND_CONTEXTS = {
    ProxyKind.SIDECAR: (PatchContext.SIDECAR_INBOUND, PatchContext.ANY),
    ProxyKind.GATEWAY: (PatchContext.GATEWAY, PatchContext.ANY),
}
OUTBOUND_CONTEXTS = (PatchContext.SIDECAR_OUTBOUND, PatchContext.ANY)


@dataclass(frozen=True)
class Proxy:
    """The proxy an EnvoyFilter may reach: where its pods run, their labels, its control plane
    (revision) and its release."""

    namespace: str
    labels: Mapping[str, str]
    kind: ProxyKind = ProxyKind.SIDECAR
    revision: str | None = None
    version: str | None = None


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


def in_revision(object_revision: str | None, proxy_revision: str | None) -> bool:
    """Istio's ``LabelsInRevision``: an object without ``istio.io/rev`` reaches every control
    plane; a control plane without a revision reads every object; else the labels must agree."""
    return object_revision is None or not proxy_revision or object_revision == proxy_revision


def reaching(filters: Sequence[EnvoyFilter], proxy: Proxy, root_ns: str) -> list[EnvoyFilter]:
    """The filters of the proxy's namespace or the root namespace, of its control plane, in
    Istio's order of application (priority, root namespace first, creation time, name)."""
    scoped = [
        f
        for f in filters
        if f.namespace in (proxy.namespace, root_ns) and in_revision(f.revision, proxy.revision)
    ]
    return sorted(
        scoped,
        key=lambda f: (f.priority, f.namespace != root_ns, f.created, f.namespace, f.name),
    )


def check_patches(
    filters: Sequence[EnvoyFilter], proxy: Proxy, root_ns: str, target_port: int | None
) -> list[PatchCheck]:
    """Every allow_connect patch that could reach the proxy's inbound connection manager."""
    return [
        _check(f, p, proxy, target_port)
        for f in reaching(filters, proxy, root_ns)
        for p in f.patches
    ]


def _selects(ef: EnvoyFilter, labels: Mapping[str, str]) -> str | None:
    """None when the filter's workloadSelector selects the pods, else why not."""
    selector = ef.workload_selector or {}
    if all(labels.get(k) == v for k, v in selector.items()):
        return None
    shown = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return f"its workloadSelector ({shown}) does not select the pods"


def _check(
    ef: EnvoyFilter, patch: ConnectPatch, proxy: Proxy, target_port: int | None
) -> PatchCheck:
    unselected = _selects(ef, proxy.labels)
    if unselected:
        return PatchCheck(ef, patch, False, unselected)
    if patch.context not in INBOUND_CONTEXTS[proxy.kind]:
        where = (
            "a gateway's listeners" if proxy.kind is ProxyKind.GATEWAY else "the inbound listener"
        )
        reason = f"context {patch.context} does not patch {where}"
        if proxy.kind is ProxyKind.GATEWAY:
            reason += " (the server proxy is a gateway)"
        return PatchCheck(ef, patch, False, reason)
    if (
        patch.port_number is not None
        and target_port is not None
        and patch.port_number != target_port
    ):
        return PatchCheck(
            ef, patch, False, f"listener portNumber {patch.port_number} is not the target port"
        )
    applies, reason = version_matches(patch.proxy_version, proxy.version)
    return PatchCheck(ef, patch, applies, reason)


def version_matches(wanted: str | None, version: str | None) -> tuple[bool, str]:
    """``match.proxy.proxyVersion`` (a regular expression) against the proxy's version."""
    if wanted is None:
        return True, "applies"
    if version is None:
        return True, f"applies if proxyVersion '{wanted}' matches (Istio version unknown)"
    try:
        matched = re.search(wanted, version) is not None
    except re.error:
        return False, f"proxyVersion '{wanted}' is not a valid expression"
    if not matched:
        return False, f"proxyVersion '{wanted}' does not match {version}"
    return True, f"applies (proxyVersion '{wanted}' matches {version})"


def allow_connect(checks: Sequence[PatchCheck]) -> PatchCheck | None:
    """The last applying patch decides (later MERGEs override earlier ones); None: unset."""
    applying = [c for c in checks if c.applies]
    return applying[-1] if applying else None


# -- EnvoyFilter CLUSTER patches (the client's side) ------------------------------------------


@dataclass(frozen=True)
class ClusterCheck:
    envoy_filter: EnvoyFilter
    patch: ClusterPatch
    applies: bool
    reason: str

    @property
    def ref(self) -> str:
        return f"{self.envoy_filter.ref} (configPatches[{self.patch.index}], applyTo CLUSTER)"


@dataclass(frozen=True)
class Cluster:
    """The client's outbound cluster for a host, port and subset: ``outbound|port|subset|host``."""

    host: str
    port: int
    subset: str | None = None

    @property
    def name(self) -> str:
        return f"outbound|{self.port}|{self.subset or ''}|{self.host}"


def check_cluster_patches(
    filters: Sequence[EnvoyFilter], client: Proxy, root_ns: str, cluster: Cluster
) -> list[ClusterCheck]:
    """Every CLUSTER patch that sets the protocol and could reach the client's cluster, in order
    of application; a later one wins. A filter with a workloadSelector reaches only the clients
    it selects, which the doctor does not know: it is reported, not applied."""
    return [
        _check_cluster(f, p, client, cluster)
        for f in reaching(filters, client, root_ns)
        for p in f.cluster_patches
    ]


def _check_cluster(
    ef: EnvoyFilter, patch: ClusterPatch, client: Proxy, cluster: Cluster
) -> ClusterCheck:
    if ef.workload_selector:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(ef.workload_selector.items()))
        why = f"it reaches only the clients its workloadSelector ({shown}) selects; not applied"
        return ClusterCheck(ef, patch, False, why)
    if patch.context not in OUTBOUND_CONTEXTS:
        return ClusterCheck(ef, patch, False, f"context {patch.context} misses sidecar clients")
    mismatch = _cluster_mismatch(patch, cluster)
    if mismatch:
        return ClusterCheck(ef, patch, False, mismatch)
    applies, reason = version_matches(patch.proxy_version, client.version)
    return ClusterCheck(ef, patch, applies, reason)


def _cluster_mismatch(patch: ClusterPatch, cluster: Cluster) -> str | None:
    if patch.cluster_name is not None and patch.cluster_name != cluster.name:
        return f"cluster name {patch.cluster_name!r} is not {cluster.name!r}"
    if patch.service is not None and not host_matches(patch.service, cluster.host):
        return f"cluster service {patch.service!r} does not match {cluster.host}"
    if patch.port_number is not None and patch.port_number != cluster.port:
        return f"cluster portNumber {patch.port_number} is not {cluster.port}"
    if patch.subset is not None and patch.subset != cluster.subset:
        return f"cluster subset {patch.subset!r} is not this route's"
    return None


def cluster_protocol(checks: Sequence[ClusterCheck]) -> ClusterCheck | None:
    applying = [c for c in checks if c.applies]
    return applying[-1] if applying else None
