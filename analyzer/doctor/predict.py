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

An HTTP/2 hop carries the WebSocket as an extended CONNECT, which the server sidecar accepts
only when an EnvoyFilter sets ``allow_connect: true`` on its inbound connection manager (and
only from Istio 1.12); otherwise every upgrade fails with ``h2-connect-not-allowed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from analyzer.doctor import istio
from analyzer.doctor.model import (
    DEFAULT_DOMAIN,
    Decider,
    DestinationRule,
    H2UpgradePolicy,
    HttpPool,
    Inventory,
    Protocol,
    Service,
    ServicePort,
    Verdict,
    Workload,
)
from analyzer.doctor.remedy import Fix, remedy
from analyzer.hops import ASSUMED_APP_HOP, upgrade_path
from analyzer.vocab import Cause, Hop, UpgradePath

FIRST_CONNECT_VERSION = (1, 12)
CONTROLLER_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


@dataclass(frozen=True)
class DoctorSettings:
    client_namespace: str | None = None  # None: clients in the Service's own namespace
    domain: str = DEFAULT_DOMAIN


@dataclass(frozen=True)
class Prediction:
    service: str  # FQDN
    namespace: str
    port: int
    port_name: str
    upgrade_path: UpgradePath
    verdict: Verdict
    cause: Cause
    evidence: tuple[str, ...]
    remedy: str

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "port": self.port,
            "upgrade_path": self.upgrade_path.value,
            "verdict": self.verdict.value,
            "cause": self.cause.value,
            "evidence": "; ".join(self.evidence),
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class HopDecision:
    hop: Hop
    decider: Decider
    evidence: tuple[str, ...]
    rule: DestinationRule | None = None
    port_level: bool = False


@dataclass(frozen=True)
class ConnectCheck:
    allowed: bool
    evidence: tuple[str, ...]
    denying_priority: int | None = None  # the highest priority of a patch setting it false


def predict(inventory: Inventory, settings: DoctorSettings = DoctorSettings()) -> list[Prediction]:
    """One prediction per (Service, port) that carries HTTP, sorted by service and port."""
    out = [
        _predict_port(inventory, settings, service, port)
        for service in inventory.services
        for port in service.ports
        if carries_websockets(port)
    ]
    return sorted(out, key=lambda p: (p.service, p.port))


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


def _predict_port(
    inventory: Inventory, settings: DoctorSettings, service: Service, port: ServicePort
) -> Prediction:
    hop = decide_hop(inventory, settings, service, port)
    host = istio.fqdn(service.name, service.namespace, settings.domain)
    path = upgrade_path(ASSUMED_APP_HOP, hop.hop)
    check = check_connect(inventory, service, port) if hop.hop is Hop.H2 else None
    ok = check is None or check.allowed
    after = check.denying_priority if check else None
    fix = Fix(service, port, host, hop.decider, hop.rule, hop.port_level, _old(inventory), after)
    return Prediction(
        service=host,
        namespace=service.namespace,
        port=port.port,
        port_name=port.name,
        upgrade_path=path,
        verdict=Verdict.OK if ok else Verdict.FAIL,
        cause=Cause.NONE if ok else Cause.H2_CONNECT_NOT_ALLOWED,
        evidence=hop.evidence + (check.evidence if check else ()),
        remedy="" if ok else remedy(fix),
    )


def _old(inventory: Inventory) -> bool:
    version = istio.minor_version(inventory.istio_version)
    return version is not None and version < FIRST_CONNECT_VERSION


# -- the hop ----------------------------------------------------------------------------------


def decide_hop(
    inventory: Inventory, settings: DoctorSettings, service: Service, port: ServicePort
) -> HopDecision:
    protocol, named_by = istio.port_protocol(port)
    choice = istio.choose_rule(
        inventory.destination_rules,
        istio.fqdn(service.name, service.namespace, settings.domain),
        service.namespace,
        settings.client_namespace or service.namespace,
        inventory.mesh,
        port.port,
        settings.domain,
    )
    decision = _decide(protocol, named_by, choice.http, choice.found, inventory)
    return replace(
        decision,
        evidence=decision.evidence + choice.notes,
        rule=choice.rule,
        port_level=choice.port_level,
    )


def _decide(
    protocol: Protocol,
    named_by: str,
    http: HttpPool | None,
    where: str,
    inventory: Inventory,
) -> HopDecision:
    policy = http.h2_upgrade_policy if http else H2UpgradePolicy.DEFAULT
    if http and http.use_client_protocol:
        said = f"{where}: useClientProtocol: true, the hop follows the client's HTTP/1.1"
        return HopDecision(Hop.H1, Decider.USE_CLIENT_PROTOCOL, (said,))
    if protocol.is_http2:
        said = f"{named_by} means {protocol}: the hop is always HTTP/2"
        if policy is H2UpgradePolicy.DO_NOT_UPGRADE:
            said += f" ({where}: h2UpgradePolicy DO_NOT_UPGRADE cannot change that)"
        return HopDecision(Hop.H2, Decider.PORT_PROTOCOL, (said,))
    if policy is not H2UpgradePolicy.DEFAULT:
        hop = Hop.H2 if policy is H2UpgradePolicy.UPGRADE else Hop.H1
        return HopDecision(hop, Decider.DESTINATION_RULE, (f"{where}: h2UpgradePolicy {policy}",))
    if protocol is Protocol.UNSUPPORTED:
        said = f"{named_by}: Istio sniffs the protocol and the hop follows the client's HTTP/1.1"
        return HopDecision(Hop.H1, Decider.SNIFFED, (said,))
    return _mesh_decision(protocol, named_by, where, inventory)


def _mesh_decision(
    protocol: Protocol, named_by: str, where: str, inventory: Inventory
) -> HopDecision:
    mesh = inventory.mesh
    source = mesh.source or "Istio's default mesh config"
    hop = Hop.H2 if mesh.h2_upgrade_policy is H2UpgradePolicy.UPGRADE else Hop.H1
    rule = f"{where} sets no h2UpgradePolicy" if where else "no DestinationRule applies"
    said = (
        f"{named_by} means {protocol}; {rule}; "
        f"mesh-wide h2UpgradePolicy {mesh.h2_upgrade_policy} ({source})"
    )
    return HopDecision(hop, Decider.MESH, (said,))


# -- the server's inbound connection manager --------------------------------------------------


def check_connect(inventory: Inventory, service: Service, port: ServicePort) -> ConnectCheck:
    """Does every server workload accept extended CONNECT on its inbound listener?"""
    if _old(inventory):
        said = (
            f"Istio {inventory.istio_version} ({inventory.version_source}) is older than 1.12: "
            "sidecars cannot carry a WebSocket over an HTTP/2 hop"
        )
        return ConnectCheck(False, (said,))
    workloads = server_workloads(inventory, service)
    if not workloads:
        stand_in = Workload("Service selector", service.name, service.namespace, service.selector)
        checks = [_check_workload(inventory, stand_in, port)]
        note = "no server workloads found: judged on the Service's selector labels"
        return replace(checks[0], evidence=(note, *checks[0].evidence))
    checks = [_check_workload(inventory, w, port) for w in workloads]
    evidence = tuple(e for c in checks for e in c.evidence)
    denying = [c.denying_priority for c in checks if c.denying_priority is not None]
    return ConnectCheck(all(c.allowed for c in checks), evidence, max(denying, default=None))


def server_workloads(inventory: Inventory, service: Service) -> list[Workload]:
    """Workloads whose pods the Service selects; controllers stand for their pods."""
    if not service.selector:
        return []
    selected = [
        w
        for w in inventory.workloads
        if w.namespace == service.namespace
        and all(w.labels.get(k) == v for k, v in service.selector.items())
    ]
    controllers = [w for w in selected if w.kind in CONTROLLER_KINDS]
    return controllers or selected


def _check_workload(inventory: Inventory, workload: Workload, port: ServicePort) -> ConnectCheck:
    target = _target_port(port, workload)
    checks = istio.check_patches(
        inventory.envoy_filters,
        workload.namespace,
        workload.labels,
        inventory.mesh.root_namespace,
        inventory.istio_version,
        target,
    )
    who = f"{workload.kind} {workload.namespace}/{workload.name}"
    notes = [f"{c.ref} for {who}: {c.reason}" for c in checks if not c.applies]
    decisive = istio.allow_connect(checks)
    if decisive is None:
        said = f"{who}: no EnvoyFilter sets allow_connect on its inbound connection manager"
        return ConnectCheck(False, (said, *notes))
    value = "true" if decisive.patch.allow_connect else "false"
    said = f"{who}: {decisive.ref} sets allow_connect: {value}, {decisive.reason}"
    denying = [c.envoy_filter.priority for c in checks if c.applies and not c.patch.allow_connect]
    return ConnectCheck(decisive.patch.allow_connect, (said, *notes), max(denying, default=None))


def _target_port(port: ServicePort, workload: Workload) -> int | None:
    if port.target_port.isdigit():
        return int(port.target_port)
    return workload.container_ports.get(port.target_port)


def failing(predictions: Sequence[Prediction]) -> bool:
    return any(p.verdict is Verdict.FAIL for p in predictions)
