"""Manifests (plain dicts, from YAML files or the API server) into the doctor's model.

Both edges, ``load`` (files) and ``exporter.kube.mesh`` (a cluster), hand their documents here,
so the prediction never knows where configuration came from. Documents that are not understood
become problems (data), never exceptions. Objects are taken as ``kubectl apply`` would leave them,
so a fix written beside the configuration replaces the object it changes instead of doubling it.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import yaml

from analyzer.doctor.istio import gateway_labels, gateway_selects
from analyzer.doctor.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_ROOT_NAMESPACE,
    ClusterPatch,
    ClusterProtocol,
    ConnectPatch,
    DestinationRule,
    EnvoyFilter,
    GatewaySelector,
    H2UpgradePolicy,
    HttpPool,
    Inventory,
    MeshSettings,
    PatchContext,
    PortPolicy,
    ProxyKind,
    RouteDestination,
    Service,
    ServicePort,
    Subset,
    VirtualService,
    Workload,
)
from analyzer.doctor.versions import minor_version

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
HCM_TYPE_SUFFIX = "HttpConnectionManager"
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
MESH_CONFIGMAP = re.compile(r"^istio(?:-(?P<rev>[a-z0-9-]+))?$")
INJECTOR_CONFIGMAP = re.compile(r"^istio-sidecar-injector(?:-(?P<rev>[a-z0-9-]+))?$")
REV_LABEL = "istio.io/rev"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PARTS = ("svc", "wl", "dr", "ef", "mesh", "ver", "bad", "vs", "gw", "ns", "se")
VERSION_IMAGE = re.compile(r"/(?P<image>pilot|proxyv2)(?:-[a-z]+)?:(?P<tag>\d+\.\d+[^@\s]*)")
# Where Istio's version was read, most telling first: istiod's image (its rules build the
# clusters), the installation's values (IstioOperator, the injector's Helm values), a sidecar's.
RANK_ISTIOD, RANK_VALUES, RANK_PROXY = 0, 1, 2

Doc = Mapping[str, Any]


def inventory_from_manifests(
    docs: Iterable[Any], default_namespace: str = DEFAULT_NAMESPACE
) -> Inventory:
    """Every object of ``docs`` (``kind: List`` items included) the doctor cares about."""
    parts: dict[str, list[Any]] = {k: [] for k in PARTS}
    for doc in applied(_flatten(docs), default_namespace):
        _collect(doc, default_namespace, parts)
    meshes: list[MeshSettings] = parts["mesh"]
    # revision, version, where, rank; the best ranked first (a stable sort keeps reading order)
    versions: list[tuple[str, str, str, int]] = sorted(parts["ver"], key=lambda v: v[3])
    default = [v for v in versions if not v[0]] or versions
    version, version_source = (default[0][1], default[0][2]) if default else (None, "")
    gateways: list[GatewaySelector] = parts["gw"]
    return Inventory(
        services=tuple(parts["svc"]) + tuple(parts["se"]),
        workloads=tuple(_as_gateway(w, gateways) for w in parts["wl"]),
        destination_rules=tuple(parts["dr"]),
        envoy_filters=tuple(parts["ef"]),
        mesh=next((m for m in meshes if not m.revision), meshes[0] if meshes else MeshSettings()),
        istio_version=version,
        version_source=version_source,
        problems=tuple(parts["bad"]),
        virtual_services=tuple(parts["vs"]),
        gateways=tuple(gateways),
        meshes=tuple(meshes),
        namespace_revisions=dict(parts["ns"]),
        revision_versions={rev: (v, where) for rev, v, where, _ in reversed(versions) if rev},
    )


def _flatten(docs: Iterable[Any]) -> Iterator[Doc]:
    for doc in docs:
        if not isinstance(doc, Mapping):
            continue
        items = doc.get("items")
        if str(doc.get("kind", "")).endswith("List") and isinstance(items, list):
            yield from _flatten(items)
        else:
            yield doc


def applied(docs: Iterable[Doc], default_ns: str) -> list[Doc]:
    """The objects as ``kubectl apply`` of them all leaves a cluster: a later object with the same
    API group, kind, namespace and name replaces the earlier one, in its place."""
    kept: dict[Hashable, Doc] = {}
    for index, doc in enumerate(docs):
        kept[_identity(doc, default_ns) or index] = doc
    return list(kept.values())


def _identity(doc: Doc, default_ns: str) -> tuple[str, str, str, str] | None:
    name = _meta(doc).get("name")
    if not name:
        return None
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    namespace = str(_meta(doc).get("namespace") or default_ns)
    return group, str(doc.get("kind", "")), namespace, str(name)


def _collect(doc: Doc, default_ns: str, parts: dict[str, list[Any]]) -> None:
    kind = str(doc.get("kind", ""))
    ns = _meta(doc).get("namespace") or default_ns
    try:
        if kind == "Service":
            parts["svc"].append(parse_service(doc, ns))
        elif kind == "Pod" or kind in POD_TEMPLATE_KINDS:
            parts["wl"].append(parse_workload(doc, ns))
            parts["ver"].extend(_versions(doc, ns))
        elif kind == "DestinationRule":
            parts["dr"].append(parse_destination_rule(doc, ns))
            parts["bad"].extend(_refused_by_validation(doc, ns))
        elif kind == "EnvoyFilter":
            parts["ef"].append(parse_envoy_filter(doc, ns))
        elif kind in ("ConfigMap", "IstioOperator"):
            parts["mesh"].extend(_mesh(doc, kind, ns))
            parts["ver"].extend(_operator_version(doc, kind))
            parts["ver"].extend(_injector_version(doc, kind, ns))
        else:
            _collect_more(doc, kind, ns, parts)
    except (TypeError, ValueError, AttributeError, KeyError, yaml.YAMLError) as error:
        parts["bad"].append(f"{object_ref(doc, ns)}: cannot read it ({error})")


def _collect_more(doc: Doc, kind: str, ns: str, parts: dict[str, list[Any]]) -> None:
    if kind == "VirtualService":
        parts["vs"].append(parse_virtual_service(doc, ns))
    elif kind == "Gateway" and str(doc.get("apiVersion", "")).startswith("networking.istio.io"):
        selector = _labels(_map(doc.get("spec")).get("selector"))
        parts["gw"].append(GatewaySelector(str(_meta(doc)["name"]), ns, selector))
    elif kind == "Namespace":
        labels = _labels(_meta(doc).get("labels"))
        if REV_LABEL in labels:
            parts["ns"].append((str(_meta(doc)["name"]), labels[REV_LABEL]))
    elif kind == "ServiceEntry":
        parts["se"].extend(parse_service_entry(doc, ns))


def object_ref(doc: Doc, ns: str) -> str:
    """``Kind namespace/name``; an object without a name says so (an IstioOperator read by
    istioctl needs none)."""
    kind = str(doc.get("kind") or "object")
    name = _meta(doc).get("name")
    if not name:
        where = _meta(doc).get("namespace")
        return f"{kind} without metadata.name" + (f" in namespace {where}" if where else "")
    return f"{kind} {ns}/{name}"


def _revision(doc: Doc) -> str | None:
    rev = _labels(_meta(doc).get("labels")).get(REV_LABEL)
    return rev or None


def _meta(doc: Doc) -> Mapping[str, Any]:
    meta = doc.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _map(value).items()}


# -- Kubernetes -------------------------------------------------------------------------------


def parse_service(doc: Doc, ns: str) -> Service:
    spec = _map(doc.get("spec"))
    ports = tuple(_service_port(p) for p in spec.get("ports") or [])
    selector = _labels(spec.get("selector"))
    return Service(str(_meta(doc)["name"]), ns, ports, selector, spec=spec)


def parse_service_entry(doc: Doc, ns: str) -> Iterator[Service]:
    """One Service-like host per ``spec.hosts`` entry, with the entry's ports."""
    spec = _map(doc.get("spec"))
    ports = tuple(
        ServicePort(
            port=int(_map(p)["number"]),
            name=str(_map(p).get("name") or ""),
            target_port=str(_map(p).get("targetPort") or _map(p)["number"]),
            declared=str(_map(p).get("protocol") or "") or None,
        )
        for p in spec.get("ports") or []
    )
    external = str(spec.get("location") or "MESH_EXTERNAL") == "MESH_EXTERNAL"
    selector = _labels(_map(spec.get("workloadSelector")).get("labels"))
    for host in spec.get("hosts") or []:
        name = str(_meta(doc)["name"])
        yield Service(name, ns, ports, selector, "ServiceEntry", str(host), external, spec)


def _service_port(raw: Any) -> ServicePort:
    port = _map(raw)
    app_protocol = port.get("appProtocol")
    return ServicePort(
        port=int(port["port"]),
        name=str(port.get("name") or ""),
        target_port=str(port.get("targetPort", port["port"])),
        app_protocol=str(app_protocol) if app_protocol else None,
        transport=str(port.get("protocol") or "TCP"),
    )


def parse_workload(doc: Doc, ns: str) -> Workload:
    kind = str(doc["kind"])
    pod = doc if kind == "Pod" else _map(_map(doc.get("spec")).get("template"))
    containers = _map(pod.get("spec")).get("containers") or []
    ports = {
        str(p["name"]): int(p["containerPort"])
        for c in containers
        for p in _map(c).get("ports") or []
        if _map(p).get("name") and "containerPort" in p
    }
    labels = _labels(_meta(pod).get("labels"))
    proxy = ProxyKind.GATEWAY if _gateway_pod(pod, labels) else ProxyKind.SIDECAR
    revision = labels.get(REV_LABEL) or None
    return Workload(kind, str(_meta(doc)["name"]), ns, labels, ports, proxy, revision)


def _gateway_pod(pod: Doc, labels: Mapping[str, str]) -> bool:
    """Gateway pods: Istio's gateway labels, the gateway injection template, or Envoy run as a
    router (``proxy router``)."""
    if gateway_labels(labels):
        return True
    template = str(_map(_meta(pod).get("annotations")).get("inject.istio.io/templates", ""))
    if "gateway" in template.split(","):
        return True
    containers = _map(pod.get("spec")).get("containers") or []
    return any("router" in (_map(c).get("args") or []) for c in containers)


def _as_gateway(workload: Workload, gateways: Iterable[GatewaySelector]) -> Workload:
    """A workload an Istio Gateway selects runs a gateway proxy."""
    if workload.proxy is ProxyKind.GATEWAY:
        return workload
    if any(gateway_selects(g, workload.labels) for g in gateways):
        return replace(workload, proxy=ProxyKind.GATEWAY)
    return workload


Version = tuple[str, str, str, int]  # revision, version, where it was read, rank


def _versions(doc: Doc, ns: str) -> Iterator[Version]:
    """Istio's version from istiod's (pilot) or a sidecar's (proxyv2) image tag, with the
    revision of the control plane (``istio.io/rev``) it belongs to."""
    pod = doc if doc.get("kind") == "Pod" else _map(_map(doc.get("spec")).get("template"))
    spec = _map(pod.get("spec"))
    revision = _labels(_meta(pod).get("labels")).get(REV_LABEL) or _revision(doc) or ""
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        match = VERSION_IMAGE.search(str(_map(container).get("image", "")))
        if match:
            rank = RANK_ISTIOD if match["image"] == "pilot" else RANK_PROXY
            where = f"image of {object_ref(doc, ns)}"
            yield _control_plane(revision), match["tag"], where, rank


def _operator_version(doc: Doc, kind: str) -> Iterator[Version]:
    """An IstioOperator's ``spec.tag`` or ``spec.values.global.tag``."""
    if kind != "IstioOperator":
        return
    spec = _map(doc.get("spec"))
    tag = spec.get("tag") or _map(_map(spec.get("values")).get("global")).get("tag")
    if _release(tag):
        where = object_ref(doc, str(_meta(doc).get("namespace") or DEFAULT_ROOT_NAMESPACE))
        yield _control_plane(spec.get("revision")), str(tag), f"tag of {where}", RANK_VALUES


def _injector_version(doc: Doc, kind: str, ns: str) -> Iterator[Version]:
    """``global.tag`` of the Helm values istiod's chart writes into ConfigMap
    ``istio-sidecar-injector`` (``-<revision>``), key ``values`` (JSON)."""
    name = str(_meta(doc).get("name", "")) if kind == "ConfigMap" else ""
    named = INJECTOR_CONFIGMAP.match(name)
    text = _map(doc.get("data")).get("values")
    if named is None or not isinstance(text, str):
        return
    values = _map(yaml.safe_load(text))
    tag = _map(values.get("global")).get("tag")
    if _release(tag):
        revision = values.get("revision") or _revision(doc) or named["rev"]
        where = f"values global.tag of {object_ref(doc, ns)}"
        yield _control_plane(revision), str(tag), where, RANK_VALUES


def _release(tag: Any) -> bool:
    """A tag that names a release (``1.22.1``, ``1.22.1-distroless``), not ``latest``."""
    return bool(tag) and minor_version(str(tag)) is not None


def _control_plane(revision: Any) -> str:
    """A revision as the doctor keys control planes: ``default`` (and none) is ``""``."""
    text = str(revision or "")
    return "" if text == "default" else text


# -- Istio ------------------------------------------------------------------------------------


def parse_destination_rule(doc: Doc, ns: str) -> DestinationRule:
    spec = _map(doc.get("spec"))
    policy = spec.get("trafficPolicy")
    selector = spec.get("workloadSelector")
    return DestinationRule(
        name=str(_meta(doc)["name"]),
        namespace=ns,
        host=str(spec["host"]),
        export_to=tuple(str(e) for e in spec.get("exportTo") or []),
        http=_http_pool(_map(policy).get("connectionPool")),
        has_traffic_policy=isinstance(policy, Mapping),
        port_policies=tuple(_port_policy(p) for p in _map(policy).get("portLevelSettings") or []),
        workload_selector=_labels(_map(selector).get("matchLabels")) if selector else None,
        created=str(_meta(doc).get("creationTimestamp") or ""),
        spec=spec,
        subsets=tuple(_subset(s) for s in spec.get("subsets") or []),
        revision=_revision(doc),
    )


def _subset(raw: Any) -> Subset:
    entry = _map(raw)
    policy = _map(entry.get("trafficPolicy"))
    return Subset(
        name=str(entry["name"]),
        labels=_labels(entry.get("labels")),
        pool_set=isinstance(policy.get("connectionPool"), Mapping),
        http=_http_pool(policy.get("connectionPool")),
        port_policies=tuple(_port_policy(p) for p in policy.get("portLevelSettings") or []),
    )


def parse_virtual_service(doc: Doc, ns: str) -> VirtualService:
    spec = _map(doc.get("spec"))
    destinations = tuple(
        _destination(_map(_map(route).get("destination")))
        for http in spec.get("http") or []
        for route in _map(http).get("route") or []
    )
    return VirtualService(
        name=str(_meta(doc)["name"]),
        namespace=ns,
        hosts=tuple(str(h) for h in spec.get("hosts") or []),
        destinations=destinations,
        gateways=tuple(str(g) for g in spec.get("gateways") or []),
        export_to=tuple(str(e) for e in spec.get("exportTo") or []),
        created=str(_meta(doc).get("creationTimestamp") or ""),
        revision=_revision(doc),
    )


def _destination(raw: Mapping[str, Any]) -> RouteDestination:
    number = _map(raw.get("port")).get("number")
    subset = raw.get("subset")
    return RouteDestination(
        str(raw["host"]), str(subset) if subset else None, int(number) if number else None
    )


def _refused_by_validation(doc: Doc, ns: str) -> list[str]:
    """Istio's validation (from 1.8, istio/istio commit f8f915de519) refuses a connection pool
    that sets both ``useClientProtocol`` and ``h2UpgradePolicy: UPGRADE``: such a DestinationRule
    never reaches a cluster, so the prediction for it holds only for the file."""
    spec = _map(doc.get("spec"))
    policies = [_map(spec.get("trafficPolicy"))]
    policies += [_map(_map(s).get("trafficPolicy")) for s in spec.get("subsets") or []]
    levels = [*policies, *(_map(e) for p in policies for e in p.get("portLevelSettings") or [])]
    for level in levels:
        pool = _http_pool(level.get("connectionPool"))
        if pool and pool.use_client_protocol and pool.h2_upgrade_policy is H2UpgradePolicy.UPGRADE:
            return [
                f"{object_ref(doc, ns)}: Istio refuses it (useClientProtocol with h2UpgradePolicy "
                "UPGRADE in one connection pool); keep one of them"
            ]
    return []


def _http_pool(pool: Any) -> HttpPool | None:
    http = _map(pool).get("http")
    if not isinstance(http, Mapping):
        return None
    policy = str(http.get("h2UpgradePolicy") or "DEFAULT").upper()
    return HttpPool(H2UpgradePolicy(policy), bool(http.get("useClientProtocol", False)))


def _port_policy(raw: Any) -> PortPolicy:
    entry = _map(raw)
    pool = entry.get("connectionPool")
    number = int(_map(entry.get("port"))["number"])
    return PortPolicy(number, _http_pool(pool))


def parse_envoy_filter(doc: Doc, ns: str) -> EnvoyFilter:
    spec = _map(doc.get("spec"))
    selector = spec.get("workloadSelector")
    raw_patches = list(spec.get("configPatches") or [])
    patches = (_connect_patch(i, _map(p)) for i, p in enumerate(raw_patches))
    clusters = (_cluster_patch(i, _map(p)) for i, p in enumerate(raw_patches))
    return EnvoyFilter(
        name=str(_meta(doc)["name"]),
        namespace=ns,
        patches=tuple(p for p in patches if p is not None),
        workload_selector=_labels(_map(selector).get("labels")) if selector else None,
        priority=int(spec.get("priority") or 0),
        created=str(_meta(doc).get("creationTimestamp") or ""),
        cluster_patches=tuple(c for c in clusters if c is not None),
        revision=_revision(doc),
        spec=spec,
    )


def _cluster_patch(index: int, patch: Mapping[str, Any]) -> ClusterPatch | None:
    """A CLUSTER MERGE that sets the upstream protocol: ``http2_protocol_options`` (the v2-era
    cluster field) or ``typed_extension_protocol_options`` with an explicit HTTP/2 config or the
    downstream protocol."""
    body = _map(patch.get("patch"))
    if patch.get("applyTo") != "CLUSTER" or body.get("operation") != "MERGE":
        return None
    protocol = _cluster_protocol(_map(body.get("value")))
    if protocol is None:
        return None
    match = _map(patch.get("match"))
    cluster = _map(match.get("cluster"))
    version = _map(match.get("proxy")).get("proxyVersion")
    return ClusterPatch(
        index=index,
        context=PatchContext(str(match.get("context") or "ANY")),
        protocol=protocol,
        proxy_version=str(version) if version else None,
        service=str(cluster["service"]) if cluster.get("service") else None,
        port_number=int(cluster["portNumber"]) if cluster.get("portNumber") else None,
        subset=str(cluster["subset"]) if cluster.get("subset") else None,
        cluster_name=str(cluster["name"]) if cluster.get("name") else None,
    )


def _cluster_protocol(value: Mapping[str, Any]) -> ClusterProtocol | None:
    if "http2_protocol_options" in value or "http2ProtocolOptions" in value:
        return ClusterProtocol.HTTP2
    typed = _map(value.get("typed_extension_protocol_options"))
    options = _map(typed.get(HTTP_OPTIONS))
    if "explicit_http_config" in options:
        explicit = _map(options["explicit_http_config"])
        return ClusterProtocol.HTTP2 if "http2_protocol_options" in explicit else None
    if "use_downstream_protocol_config" in options:
        return ClusterProtocol.DOWNSTREAM
    return None


def _connect_patch(index: int, patch: Mapping[str, Any]) -> ConnectPatch | None:
    """The patch, when it is a MERGE/REPLACE of an HCM that sets ``allow_connect``."""
    body = _map(patch.get("patch"))
    if patch.get("applyTo") != "NETWORK_FILTER" or body.get("operation") not in (
        "MERGE",
        "REPLACE",
    ):
        return None
    match = _map(patch.get("match"))
    listener = _map(match.get("listener"))
    name = _map(_map(listener.get("filterChain")).get("filter")).get("name")
    typed = _map(
        _map(body.get("value")).get("typed_config") or _map(body.get("value")).get("typedConfig")
    )
    allow = _allow_connect(typed)
    if allow is None or (name and name not in HCM_NAMES):
        return None
    if not str(typed.get("@type", HCM_TYPE_SUFFIX)).endswith(HCM_TYPE_SUFFIX):
        return None
    version = _map(match.get("proxy")).get("proxyVersion")
    port = listener.get("portNumber")
    return ConnectPatch(
        index=index,
        context=PatchContext(str(match.get("context") or "ANY")),
        allow_connect=allow,
        proxy_version=str(version) if version else None,
        port_number=int(port) if port else None,
    )


def _allow_connect(typed: Mapping[str, Any]) -> bool | None:
    """``http2_protocol_options.allow_connect`` in either JSON spelling, or None if unset."""
    options = typed.get("http2_protocol_options", typed.get("http2ProtocolOptions"))
    value = _map(options).get("allow_connect", _map(options).get("allowConnect"))
    return None if value is None else value is True or str(value).lower() == "true"


# -- mesh config ------------------------------------------------------------------------------


def _mesh(doc: Doc, kind: str, ns: str) -> Iterator[MeshSettings]:
    """The mesh config of ConfigMap ``istio`` (``istio-<revision>`` for a revision's control
    plane) or of an IstioOperator (``spec.revision``)."""
    if kind == "ConfigMap":
        named = MESH_CONFIGMAP.match(str(_meta(doc).get("name", "")))
        text = _map(doc.get("data")).get("mesh")
        if not named or not isinstance(text, str):
            return  # istio-ca-root-cert, istio-sidecar-injector ... hold no mesh config
        mesh = _map(yaml.safe_load(text))
        where = f"{object_ref(doc, ns)} (data.mesh)"
        yield mesh_settings(mesh, ns, where, named["rev"] or "")
    else:
        spec = _map(doc.get("spec"))
        mesh = _map(spec.get("meshConfig"))
        where = object_ref(doc, ns)
        yield mesh_settings(mesh, DEFAULT_ROOT_NAMESPACE, where, str(spec.get("revision") or ""))


def istio_config_map(name: str) -> bool:
    """A ConfigMap of Istio's control planes the doctor reads: the mesh config (``istio``,
    ``istio-<revision>``) or the injector's values (``istio-sidecar-injector[-<revision>]``)."""
    return MESH_CONFIGMAP.match(name) is not None


def mesh_settings(
    mesh: Mapping[str, Any], namespace: str, source: str, revision: str = ""
) -> MeshSettings:
    policy = str(mesh.get("h2UpgradePolicy") or "DO_NOT_UPGRADE").upper()
    export_to = mesh.get("defaultDestinationRuleExportTo") or ["*"]
    return MeshSettings(
        h2_upgrade_policy=H2UpgradePolicy(policy),
        root_namespace=str(mesh.get("rootNamespace") or namespace),
        default_dr_export_to=tuple(str(e) for e in export_to),
        source=source,
        revision="" if revision == "default" else revision,
    )
