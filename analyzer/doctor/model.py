"""The few Kubernetes and Istio objects the doctor needs, reduced to what decides the upgrade path.

Parsing keeps only the fields Istio reads when it builds a client sidecar's cluster for a Service
port (protocol, DestinationRule connection-pool settings) and the server sidecar's inbound
connection manager (EnvoyFilter patches that set ``allow_connect``). Everything is frozen; label
maps are plain dicts that are never mutated after parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

DEFAULT_ROOT_NAMESPACE = "istio-system"
DEFAULT_DOMAIN = "cluster.local"
DEFAULT_NAMESPACE = "default"

Labels = Mapping[str, str]


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "fail"


class H2UpgradePolicy(StrEnum):
    DEFAULT = "DEFAULT"
    DO_NOT_UPGRADE = "DO_NOT_UPGRADE"
    UPGRADE = "UPGRADE"


class Protocol(StrEnum):
    """Istio's protocol of a Service port (``protocol.Instance``)."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    HTTP_PROXY = "HTTP_PROXY"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTPS = "HTTPS"
    TCP = "TCP"
    TLS = "TLS"
    UDP = "UDP"
    MONGO = "Mongo"
    MYSQL = "MySQL"
    REDIS = "Redis"
    UNSUPPORTED = "UnsupportedProtocol"

    @property
    def is_http2(self) -> bool:
        return self in (Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_http(self) -> bool:
        return self.is_http2 or self in (Protocol.HTTP, Protocol.HTTP_PROXY)


class Decider(StrEnum):
    """What decided the hop; the remedy depends on it."""

    USE_CLIENT_PROTOCOL = "useClientProtocol"
    PORT_PROTOCOL = "port protocol"
    DESTINATION_RULE = "DestinationRule"
    SNIFFED = "protocol sniffing"
    MESH = "mesh config"
    CLUSTER_PATCH = "EnvoyFilter CLUSTER patch"


class PatchContext(StrEnum):
    ANY = "ANY"
    SIDECAR_INBOUND = "SIDECAR_INBOUND"
    SIDECAR_OUTBOUND = "SIDECAR_OUTBOUND"
    GATEWAY = "GATEWAY"


class ProxyKind(StrEnum):
    """The proxy in front of a server: an injected sidecar, or a gateway (the pods are Envoy)."""

    SIDECAR = "sidecar"
    GATEWAY = "gateway"


class ClusterProtocol(StrEnum):
    """What an EnvoyFilter CLUSTER patch makes of the client's upstream protocol."""

    HTTP2 = "HTTP/2"
    DOWNSTREAM = "the client's protocol"


@dataclass(frozen=True)
class ServicePort:
    port: int
    name: str = ""
    target_port: str = ""  # a number or a container port name, as written
    app_protocol: str | None = None
    transport: str = "TCP"  # spec.ports[].protocol: TCP, UDP, SCTP
    declared: str | None = None  # a ServiceEntry port's protocol (HTTP, HTTP2, TCP ...)


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service, or a ServiceEntry host (``kind``; ``host`` set, ``external`` when
    its location is MESH_EXTERNAL: no sidecar of this mesh serves it)."""

    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    selector: Labels = field(default_factory=dict)
    kind: str = "Service"
    host: str = ""  # a ServiceEntry's host, as written
    external: bool = False
    spec: Mapping[str, Any] = field(default_factory=dict)  # kept for remedies

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Workload:
    """Pods of a Deployment (StatefulSet, DaemonSet ...) or a bare Pod: their labels."""

    kind: str
    name: str
    namespace: str
    labels: Labels
    container_ports: Mapping[str, int] = field(default_factory=dict)  # name -> number
    proxy: ProxyKind = ProxyKind.SIDECAR
    revision: str | None = None  # the pods' istio.io/rev label

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class HttpPool:
    """``connectionPool.http`` of a DestinationRule, port-level or rule-level."""

    h2_upgrade_policy: H2UpgradePolicy = H2UpgradePolicy.DEFAULT
    use_client_protocol: bool = False


@dataclass(frozen=True)
class PortPolicy:
    """One ``portLevelSettings`` entry: its ``connectionPool.http``, if any."""

    port: int
    http: HttpPool | None


@dataclass(frozen=True)
class Subset:
    """A DestinationRule subset: its labels and the traffic policy that overrides the rule's."""

    name: str
    labels: Labels = field(default_factory=dict)
    pool_set: bool = False  # trafficPolicy.connectionPool given at the subset level
    http: HttpPool | None = None
    port_policies: tuple[PortPolicy, ...] = ()


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    host: str  # as written
    export_to: tuple[str, ...] = ()
    http: HttpPool | None = None  # trafficPolicy.connectionPool.http
    has_traffic_policy: bool = False
    port_policies: tuple[PortPolicy, ...] = ()
    workload_selector: Labels | None = None
    created: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)  # kept for remedies
    subsets: tuple[Subset, ...] = ()
    revision: str | None = None

    @property
    def ref(self) -> str:
        return f"DestinationRule {self.namespace}/{self.name}"


@dataclass(frozen=True)
class RouteDestination:
    """One ``http[].route[].destination`` of a VirtualService, as written."""

    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    destinations: tuple[RouteDestination, ...] = ()
    gateways: tuple[str, ...] = ()
    export_to: tuple[str, ...] = ()
    created: str = ""
    revision: str | None = None

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"


@dataclass(frozen=True)
class GatewaySelector:
    """An Istio Gateway's ``selector``: the pods it selects are gateway proxies."""

    name: str
    namespace: str
    selector: Labels


@dataclass(frozen=True)
class ConnectPatch:
    """A configPatch that merges ``allow_connect`` into an HTTP connection manager."""

    index: int
    context: PatchContext
    allow_connect: bool
    proxy_version: str | None = None
    port_number: int | None = None


@dataclass(frozen=True)
class ClusterPatch:
    """A CLUSTER patch that sets the upstream protocol of the clusters it matches."""

    index: int
    context: PatchContext
    protocol: ClusterProtocol
    proxy_version: str | None = None
    service: str | None = None  # match.cluster.service: a host, maybe a wildcard
    port_number: int | None = None
    subset: str | None = None
    cluster_name: str | None = None  # match.cluster.name: outbound|port|subset|host


@dataclass(frozen=True)
class EnvoyFilter:
    name: str
    namespace: str
    patches: tuple[ConnectPatch, ...]
    workload_selector: Labels | None = None
    priority: int = 0
    created: str = ""
    cluster_patches: tuple[ClusterPatch, ...] = ()
    revision: str | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)  # kept for remedies

    @property
    def ref(self) -> str:
        return f"EnvoyFilter {self.namespace}/{self.name}"


@dataclass(frozen=True)
class MeshSettings:
    h2_upgrade_policy: H2UpgradePolicy = H2UpgradePolicy.DO_NOT_UPGRADE
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    default_dr_export_to: tuple[str, ...] = ("*",)
    source: str = ""  # where the mesh config came from; empty: Istio's defaults
    revision: str = ""  # the control plane's revision ("": the default one)


@dataclass(frozen=True)
class Inventory:
    """Everything read from files or a cluster, and what could not be understood."""

    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    envoy_filters: tuple[EnvoyFilter, ...] = ()
    mesh: MeshSettings = MeshSettings()  # the default revision's (or the only one read)
    istio_version: str | None = None
    version_source: str = ""
    problems: tuple[str, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    gateways: tuple[GatewaySelector, ...] = ()
    meshes: tuple[MeshSettings, ...] = ()  # every revision's mesh config read
    namespace_revisions: Mapping[str, str] = field(default_factory=dict)  # ns -> istio.io/rev
    revision_versions: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def with_istio_version(self, version: str) -> Inventory:
        """The inventory as ``--istio-version`` states the mesh's version, whatever was read."""
        return replace(
            self, istio_version=version, version_source="--istio-version", revision_versions={}
        )

    def mesh_for(self, revision: str | None) -> MeshSettings:
        """The mesh config of a revision's control plane; the default one's otherwise."""
        wanted = "" if revision in (None, "default") else revision
        return next((m for m in self.meshes if m.revision == wanted), self.mesh)

    def version_for(self, revision: str | None) -> tuple[str | None, str]:
        """Istio's version for a revision's proxies, and where it was read."""
        found = self.revision_versions.get(revision or "")
        return found if found else (self.istio_version, self.version_source)
