"""Predict, for each Service port that can carry a WebSocket, the upgrade path and its verdict.

The client app speaks HTTP/1.1 to its sidecar (WebSocket clients do: ``hops.ASSUMED_APP_HOP``),
so the path is ``h1-h1`` or ``h1-h2``; only the sidecar-to-sidecar hop is decided by
configuration, in Istio's order:

1. ``useClientProtocol: true`` in the applicable DestinationRule: the hop follows the client
   (HTTP/1.1). Istio applies it after everything else, so it wins.
2. The port's protocol ``http2``/``grpc``/``grpc-web`` (name or ``appProtocol``): always HTTP/2;
   a DestinationRule's ``DO_NOT_UPGRADE`` cannot undo it.
3. The DestinationRule's ``h2UpgradePolicy`` (port-level over rule-level).
4. A port Istio cannot name (sniffed): the hop follows the client (HTTP/1.1).
5. The mesh-wide ``h2UpgradePolicy`` (default DO_NOT_UPGRADE).

An EnvoyFilter CLUSTER patch that sets the client's upstream protocol comes after all of these.
Each step holds only on the Istio releases ``versions`` names; a prediction says which release's
rule decided, and when the release is unknown it predicts for the current one and names the
releases where the verdict would differ. A VirtualService that routes a host to subsets gives one
prediction per subset (a subset's traffic policy overrides the rule's).

An HTTP/2 hop carries the WebSocket as an extended CONNECT, which the server proxy (a sidecar, or
a gateway) accepts only when an EnvoyFilter of its context sets ``allow_connect: true`` on its
connection manager (and only from Istio 1.12); otherwise every upgrade fails with
``h2-connect-not-allowed``. A MESH_EXTERNAL ServiceEntry host has no proxy of the mesh to patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from analyzer.doctor import istio
from analyzer.doctor.istio import Cluster, Proxy, RuleChoice
from analyzer.doctor.model import (
    DEFAULT_DOMAIN,
    ClusterProtocol,
    Decider,
    EnvoyFilter,
    H2UpgradePolicy,
    HttpPool,
    Inventory,
    MeshSettings,
    Protocol,
    ProxyKind,
    Service,
    ServicePort,
    Verdict,
    Workload,
)
from analyzer.doctor.remedy import Fix, remedy
from analyzer.doctor.versions import BY_RULE, Era, IstioVersion, VersionRule, eras, resolve
from analyzer.hops import ASSUMED_APP_HOP, upgrade_path
from analyzer.vocab import Cause, Hop, UpgradePath

CONTROLLER_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


@dataclass(frozen=True)
class DoctorSettings:
    client_namespace: str | None = None  # None: clients in the Service's own namespace
    domain: str = DEFAULT_DOMAIN


@dataclass(frozen=True)
class Prediction:
    service: str  # FQDN (a ServiceEntry's host as written)
    namespace: str
    port: int
    port_name: str
    upgrade_path: UpgradePath
    verdict: Verdict
    cause: Cause
    evidence: tuple[str, ...]
    remedy: str
    subset: str | None = None  # the VirtualService routes this share of traffic to a subset
    differs_on: tuple[str, ...] = ()  # version unknown: releases where the verdict differs

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "service": self.service,
            "namespace": self.namespace,
            "port": self.port,
            "upgrade_path": self.upgrade_path.value,
            "verdict": self.verdict.value,
            "cause": self.cause.value,
            "evidence": "; ".join(self.evidence),
            "remedy": self.remedy,
        }
        if self.subset is not None:
            out["subset"] = self.subset
        if self.differs_on:
            out["differs_on"] = list(self.differs_on)
        return out


@dataclass(frozen=True)
class HopDecision:
    hop: Hop
    decider: Decider
    evidence: tuple[str, ...]
    choice: RuleChoice | None = None
    cluster_filter: EnvoyFilter | None = None  # the CLUSTER patch's filter, when it decided
    cluster_patch_index: int | None = None
    hop_before_patch: Hop | None = None  # what Istio built before the CLUSTER patch decided


@dataclass(frozen=True)
class ConnectCheck:
    allowed: bool
    evidence: tuple[str, ...]
    denying_priority: int | None = None  # the highest priority of a patch setting it false
    proxy: ProxyKind = ProxyKind.SIDECAR
    external: bool = False  # no proxy of the mesh serves the host


@dataclass(frozen=True)
class Route:
    """One prediction's subject: a Service port, the subset the traffic goes to, the client's
    control plane (mesh config) and the release whose rules apply."""

    service: Service
    port: ServicePort
    host: str
    client_ns: str
    subset: str | None
    mesh: MeshSettings
    version: IstioVersion
    client_revision: str | None = None
    fixed_version: bool = False  # a stand-in release: every proxy runs it


def predict(inventory: Inventory, settings: DoctorSettings = DoctorSettings()) -> list[Prediction]:
    """One prediction per (Service, port, subset routed to) that carries HTTP, sorted."""
    out = [
        prediction
        for service in inventory.services
        for port in service.ports
        if carries_websockets(port)
        for prediction in _predict_port(inventory, settings, service, port)
    ]
    return sorted(out, key=lambda p: (p.service, p.port, p.subset or ""))


def nothing_to_check(inventory: Inventory, predictions: Sequence[Prediction]) -> str | None:
    """Why no port was predicted, or None: a check of nothing must not pass for a success."""
    if predictions:
        return None
    if not inventory.services:
        return "no Service found"
    count = len(inventory.services)
    return f"no Service port can carry a WebSocket ({count} Service(s), no HTTP or unnamed port)"


def carries_websockets(port: ServicePort) -> bool:
    """HTTP ports and ports Istio sniffs; TCP-like ports carry a WebSocket as opaque bytes."""
    protocol, _ = istio.port_protocol(port)
    return protocol.is_http or protocol is Protocol.UNSUPPORTED


def hostname(service: Service, domain: str) -> str:
    return service.host or istio.fqdn(service.name, service.namespace, domain)


def _predict_port(
    inventory: Inventory, settings: DoctorSettings, service: Service, port: ServicePort
) -> list[Prediction]:
    host = hostname(service, settings.domain)
    client_ns = settings.client_namespace or service.namespace
    routing = istio.route_subsets(
        inventory.virtual_services, host, client_ns, port.port, settings.domain
    )
    revision = inventory.namespace_revisions.get(client_ns)
    version = resolve(*inventory.version_for(revision))
    mesh = inventory.mesh_for(revision)
    out = []
    for subset in routing.subsets:
        route = Route(service, port, host, client_ns, subset, mesh, version, revision)
        prediction = _judge(inventory, settings, route)
        if routing.said:
            prediction = replace(prediction, evidence=(routing.said, *prediction.evidence))
        out.append(
            prediction if version.known else _with_eras(inventory, settings, route, prediction)
        )
    return out


def _with_eras(
    inventory: Inventory, settings: DoctorSettings, route: Route, current: Prediction
) -> Prediction:
    """Version unknown: the current release's verdict, and the releases where it differs
    (neighbouring ranges of releases with the same verdict said as one)."""
    spans: list[tuple[Era, tuple[str, str]]] = []
    for era in eras():
        other = _judge(
            inventory, settings, replace(route, version=era.stand_in(), fixed_version=True)
        )
        verdict = (other.upgrade_path, other.verdict)
        if spans and spans[-1][1] == verdict:
            spans[-1] = (Era(spans[-1][0].first, era.last), verdict)
        else:
            spans.append((era, verdict))
    now = (current.upgrade_path, current.verdict)
    differs = [
        f"{era.label}: {path} {verdict}" for era, (path, verdict) in spans if (path, verdict) != now
    ]
    if not differs:
        return current
    said = "the verdict differs on Istio " + "; ".join(differs)
    return replace(current, evidence=(*current.evidence, said), differs_on=tuple(differs))


def _judge(inventory: Inventory, settings: DoctorSettings, route: Route) -> Prediction:
    hop = decide_hop(inventory, settings, route)
    path = upgrade_path(ASSUMED_APP_HOP, hop.hop)
    check = check_connect(inventory, route) if hop.hop is Hop.H2 else None
    ok = check is None or check.allowed
    return Prediction(
        service=route.host,
        namespace=route.service.namespace,
        port=route.port.port,
        port_name=route.port.name,
        upgrade_path=path,
        verdict=Verdict.OK if ok else Verdict.FAIL,
        cause=Cause.NONE if ok else Cause.H2_CONNECT_NOT_ALLOWED,
        evidence=(
            *hop.evidence,
            *(check.evidence if check else ()),
            f"rules of {route.version.describe()}",
        ),
        remedy="" if ok or check is None else remedy(_fix(route, hop, check)),
        subset=route.subset,
    )


def _fix(route: Route, hop: HopDecision, check: ConnectCheck) -> Fix:
    choice = hop.choice
    return Fix(
        service=route.service,
        port=route.port,
        host=route.host,
        decider=hop.decider,
        rule=choice.rule if choice else None,
        port_level=choice.port_level if choice else False,
        version=route.version,
        denying_priority=check.denying_priority,
        subset=choice.subset.name if choice and choice.subset else None,
        proxy=check.proxy,
        external=check.external,
        cluster_filter=hop.cluster_filter,
        cluster_patch_index=hop.cluster_patch_index,
        h2_without_patch=hop.hop_before_patch is Hop.H2,
    )


# -- the hop ----------------------------------------------------------------------------------


def decide_hop(inventory: Inventory, settings: DoctorSettings, route: Route) -> HopDecision:
    protocol, named_by = istio.port_protocol(route.port, route.version)
    choice = istio.choose_rule(
        inventory.destination_rules,
        route.host,
        route.service.namespace,
        route.client_ns,
        route.mesh,
        route.port.port,
        settings.domain,
        route.subset,
    )
    decision = _decide(protocol, named_by, choice.http, choice.found, route)
    decision = replace(decision, evidence=decision.evidence + choice.notes, choice=choice)
    return _cluster_patched(inventory, route, decision)


def _decide(
    protocol: Protocol, named_by: str, http: HttpPool | None, where: str, route: Route
) -> HopDecision:
    version = route.version
    policy = http.h2_upgrade_policy if http else H2UpgradePolicy.DEFAULT
    unapplied = None  # what the rule sets, when this release does not apply it
    if policy is not H2UpgradePolicy.DEFAULT and not version.has(VersionRule.H2_UPGRADE_POLICY):
        said = version.says(VersionRule.H2_UPGRADE_POLICY)
        unapplied = f"{where} sets h2UpgradePolicy {policy}, not applied ({said})"
        policy = H2UpgradePolicy.DEFAULT
    if http and http.use_client_protocol:
        return _client_protocol(protocol, named_by, policy, where, route)
    if protocol.is_http2:
        return _port_forces_h2(protocol, named_by, policy, where)
    return _by_policy(protocol, named_by, policy, where, route, unapplied=unapplied)


def _port_forces_h2(
    protocol: Protocol, named_by: str, policy: H2UpgradePolicy, where: str, extra: str = ""
) -> HopDecision:
    said = f"{named_by} means {protocol}: the hop is always HTTP/2{extra}"
    if policy is H2UpgradePolicy.DO_NOT_UPGRADE:
        said += f" ({where}: h2UpgradePolicy DO_NOT_UPGRADE cannot change that)"
    return HopDecision(Hop.H2, Decider.PORT_PROTOCOL, (said,))


def _client_protocol(
    protocol: Protocol, named_by: str, policy: H2UpgradePolicy, where: str, route: Route
) -> HopDecision:
    """useClientProtocol: the hop follows the client, except where an older release let the
    port's protocol or an upgrade policy win."""
    version = route.version
    if protocol.is_http2 and not version.has(VersionRule.CLIENT_PROTOCOL_OVER_PORT):
        rule = version.says(VersionRule.CLIENT_PROTOCOL_OVER_PORT)
        extra = f" ({where} sets useClientProtocol, but {rule})"
        return _port_forces_h2(protocol, named_by, policy, where, extra)
    if not version.has(VersionRule.CLIENT_PROTOCOL_STOPS_UPGRADE):
        upgraded = _by_policy(protocol, named_by, policy, where, route)
        if upgraded.hop is Hop.H2:
            rule = version.says(VersionRule.CLIENT_PROTOCOL_STOPS_UPGRADE)
            said = f"{where} sets useClientProtocol; {rule}"
            return replace(upgraded, evidence=(*upgraded.evidence, said))
    said = f"{where}: useClientProtocol: true, the hop follows the client's HTTP/1.1"
    if protocol.is_http2:
        said += f" ({version.says(VersionRule.CLIENT_PROTOCOL_OVER_PORT)})"
    return HopDecision(Hop.H1, Decider.USE_CLIENT_PROTOCOL, (said,))


def _by_policy(
    protocol: Protocol,
    named_by: str,
    policy: H2UpgradePolicy,
    where: str,
    route: Route,
    *,
    unapplied: str | None = None,
) -> HopDecision:
    version = route.version
    sniffed = policy is H2UpgradePolicy.UPGRADE and protocol is Protocol.UNSUPPORTED
    if sniffed and not version.has(VersionRule.SNIFFED_UPGRADE):
        said = (
            f"{where}: h2UpgradePolicy UPGRADE on {named_by}, which Istio sniffs; "
            f"{version.says(VersionRule.SNIFFED_UPGRADE)}"
        )
        return HopDecision(Hop.H1, Decider.SNIFFED, (said,))
    if policy is not H2UpgradePolicy.DEFAULT:
        hop = Hop.H2 if policy is H2UpgradePolicy.UPGRADE else Hop.H1
        said = f"{where}: h2UpgradePolicy {policy}"
        if protocol.is_http2:
            return _port_forces_h2(protocol, named_by, policy, where)
        return HopDecision(hop, Decider.DESTINATION_RULE, (said,))
    if protocol is Protocol.UNSUPPORTED:
        said = f"{named_by}: Istio sniffs the protocol and the hop follows the client's HTTP/1.1"
        return HopDecision(Hop.H1, Decider.SNIFFED, (said,) + ((unapplied,) if unapplied else ()))
    return _mesh_decision(protocol, named_by, where, route, unapplied)


def _mesh_decision(
    protocol: Protocol, named_by: str, where: str, route: Route, unapplied: str | None = None
) -> HopDecision:
    mesh, version = route.mesh, route.version
    source = mesh.source or "Istio's default mesh config"
    upgrade = mesh.h2_upgrade_policy is H2UpgradePolicy.UPGRADE
    rule = unapplied or (
        f"{where} sets no h2UpgradePolicy" if where else "no DestinationRule applies"
    )
    said = (
        f"{named_by} means {protocol}; {rule}; "
        f"mesh-wide h2UpgradePolicy {mesh.h2_upgrade_policy} ({source})"
    )
    if upgrade and not version.has(VersionRule.H2_UPGRADE_POLICY):
        said += f"; {version.says(VersionRule.H2_UPGRADE_POLICY)}"
        upgrade = False
    return HopDecision(Hop.H2 if upgrade else Hop.H1, Decider.MESH, (said,))


def _cluster_patched(inventory: Inventory, route: Route, decision: HopDecision) -> HopDecision:
    """An EnvoyFilter CLUSTER patch is applied to the built cluster: it decides last."""
    client = Proxy(
        route.client_ns, {}, ProxyKind.SIDECAR, route.client_revision, _text(route.version)
    )
    cluster = Cluster(route.host, route.port.port, route.subset)
    checks = istio.check_cluster_patches(
        inventory.envoy_filters, client, route.mesh.root_namespace, cluster
    )
    notes = tuple(f"{c.ref}: {c.reason}" for c in checks if not c.applies)
    decisive = istio.cluster_protocol(checks)
    if decisive is None:
        return replace(decision, evidence=decision.evidence + notes)
    hop = Hop.H2 if decisive.patch.protocol is ClusterProtocol.HTTP2 else Hop.H1
    said = (
        f"{decisive.ref} sets the client's cluster {cluster.name} to "
        f"{decisive.patch.protocol} ({decisive.reason}), after everything above"
    )
    return replace(
        decision,
        hop=hop,
        decider=Decider.CLUSTER_PATCH,
        evidence=(*decision.evidence, said, *notes),
        cluster_filter=decisive.envoy_filter,
        cluster_patch_index=decisive.patch.index,
        hop_before_patch=decision.hop,
    )


def _text(version: IstioVersion) -> str | None:
    return version.text if version.known else None


# -- the server's connection manager ----------------------------------------------------------


def check_connect(inventory: Inventory, route: Route) -> ConnectCheck:
    """Does every server proxy accept extended CONNECT on its connection manager?"""
    service = route.service
    if service.external:
        said = (
            f"{service.ref}: {route.host} is MESH_EXTERNAL: no proxy of the mesh serves it, so no "
            "EnvoyFilter can let it accept a WebSocket over HTTP/2 (extended CONNECT); an external "
            "server that does not speak it answers the upgrade with an error"
        )
        return ConnectCheck(False, (said,), external=True)
    workloads = server_workloads(inventory, service, route.subset, route.host, route.client_ns)
    if not workloads:
        proxy = ProxyKind.GATEWAY if _gateway(inventory, service.selector) else ProxyKind.SIDECAR
        stand_in = Workload(
            "Service selector", service.name, service.namespace, service.selector, proxy=proxy
        )
        check = _check_workload(inventory, stand_in, route)
        note = "no server workloads found: judged on the Service's selector labels"
        return replace(check, evidence=(note, *check.evidence))
    checks = [_check_workload(inventory, w, route) for w in workloads]
    evidence = tuple(e for c in checks for e in c.evidence)
    denying = [c.denying_priority for c in checks if c.denying_priority is not None]
    gateway = any(c.proxy is ProxyKind.GATEWAY for c in checks)
    return ConnectCheck(
        all(c.allowed for c in checks),
        evidence,
        max(denying, default=None),
        ProxyKind.GATEWAY if gateway else ProxyKind.SIDECAR,
    )


def _gateway(inventory: Inventory, selector: Mapping[str, str]) -> bool:
    return istio.gateway_labels(selector) or any(
        istio.gateway_selects(g, selector) for g in inventory.gateways
    )


def server_workloads(
    inventory: Inventory,
    service: Service,
    subset: str | None = None,
    host: str = "",
    client_ns: str = "",
) -> list[Workload]:
    """Workloads whose pods the Service (and the subset's labels) selects; controllers stand for
    their pods."""
    if not service.selector:
        return []
    labels = dict(service.selector)
    if subset:
        labels.update(_subset_labels(inventory, host, service.namespace, client_ns, subset))
    selected = [
        w
        for w in inventory.workloads
        if w.namespace == service.namespace and all(w.labels.get(k) == v for k, v in labels.items())
    ]
    controllers = [w for w in selected if w.kind in CONTROLLER_KINDS]
    return controllers or selected


def _subset_labels(
    inventory: Inventory, host: str, service_ns: str, client_ns: str, subset: str
) -> dict[str, str]:
    revision = inventory.namespace_revisions.get(client_ns)
    choice = istio.choose_rule(
        inventory.destination_rules,
        host,
        service_ns,
        client_ns,
        inventory.mesh_for(revision),
        0,
        subset=subset,
    )
    return dict(choice.subset.labels) if choice.subset else {}


def _check_workload(inventory: Inventory, workload: Workload, route: Route) -> ConnectCheck:
    revision = workload.revision or inventory.namespace_revisions.get(workload.namespace)
    version = route.version if route.fixed_version else resolve(*inventory.version_for(revision))
    who = f"{workload.kind} {workload.namespace}/{workload.name}"
    if workload.proxy is ProxyKind.GATEWAY:
        who += " (a gateway)"
    if not version.has(VersionRule.ALLOW_CONNECT):
        said = (
            f"{who}: {version.describe()} is older than 1.12: proxies cannot carry a WebSocket "
            f"over an HTTP/2 hop ({BY_RULE[VersionRule.ALLOW_CONNECT].source})"
        )
        return ConnectCheck(False, (said,), proxy=workload.proxy)
    proxy = Proxy(workload.namespace, workload.labels, workload.proxy, revision, _text(version))
    mesh = inventory.mesh_for(revision)
    target = _target_port(route.port, workload)
    checks = istio.check_patches(inventory.envoy_filters, proxy, mesh.root_namespace, target)
    notes = [f"{c.ref} for {who}: {c.reason}" for c in checks if not c.applies]
    decisive = istio.allow_connect(checks)
    if decisive is None:
        listener = "its gateway listener" if workload.proxy is ProxyKind.GATEWAY else "its inbound"
        said = f"{who}: no EnvoyFilter sets allow_connect on {listener} connection manager"
        return ConnectCheck(False, (said, *notes), proxy=workload.proxy)
    value = "true" if decisive.patch.allow_connect else "false"
    said = f"{who}: {decisive.ref} sets allow_connect: {value}, {decisive.reason}"
    denying = [c.envoy_filter.priority for c in checks if c.applies and not c.patch.allow_connect]
    return ConnectCheck(
        decisive.patch.allow_connect, (said, *notes), max(denying, default=None), workload.proxy
    )


def _target_port(port: ServicePort, workload: Workload) -> int | None:
    if port.target_port.isdigit():
        return int(port.target_port)
    return workload.container_ports.get(port.target_port)


def failing(predictions: Sequence[Prediction]) -> bool:
    return any(p.verdict is Verdict.FAIL for p in predictions)
