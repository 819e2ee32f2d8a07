"""Manifests (plain dicts, from YAML files or the API server) into the doctor's model.

Both edges, ``load`` (files) and ``exporter.kube.mesh`` (a cluster), hand their documents here,
so the prediction never knows where configuration came from. Documents that are not understood
become problems (data), never exceptions. Objects are taken as ``kubectl apply`` would leave them,
so a fix written beside the configuration replaces the object it changes instead of doubling it.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

import yaml

from analyzer.doctor.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_ROOT_NAMESPACE,
    ConnectPatch,
    DestinationRule,
    EnvoyFilter,
    H2UpgradePolicy,
    HttpPool,
    Inventory,
    MeshSettings,
    PatchContext,
    PortPolicy,
    Service,
    ServicePort,
    Workload,
)

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
HCM_TYPE_SUFFIX = "HttpConnectionManager"
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
MESH_CONFIGMAP = re.compile(r"^istio(-[a-z0-9-]+)?$")
VERSION_IMAGE = re.compile(r"/(?:pilot|proxyv2)(?:-[a-z]+)?:(?P<tag>\d+\.\d+[^@\s]*)")

Doc = Mapping[str, Any]


def inventory_from_manifests(
    docs: Iterable[Any], default_namespace: str = DEFAULT_NAMESPACE
) -> Inventory:
    """Every object of ``docs`` (``kind: List`` items included) the doctor cares about."""
    parts: dict[str, list[Any]] = {k: [] for k in ("svc", "wl", "dr", "ef", "mesh", "ver", "bad")}
    for doc in applied(_flatten(docs), default_namespace):
        _collect(doc, default_namespace, parts)
    meshes: list[MeshSettings] = parts["mesh"]
    versions: list[tuple[str, str]] = parts["ver"]
    version, version_source = versions[0] if versions else (None, "")
    return Inventory(
        services=tuple(parts["svc"]),
        workloads=tuple(parts["wl"]),
        destination_rules=tuple(parts["dr"]),
        envoy_filters=tuple(parts["ef"]),
        mesh=meshes[0] if meshes else MeshSettings(),
        istio_version=version,
        version_source=version_source,
        problems=tuple(parts["bad"]),
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
            parts["ver"].extend(_versions(doc))
        elif kind == "DestinationRule":
            parts["dr"].append(parse_destination_rule(doc, ns))
        elif kind == "EnvoyFilter":
            parts["ef"].append(parse_envoy_filter(doc, ns))
        elif kind in ("ConfigMap", "IstioOperator"):
            parts["mesh"].extend(_mesh(doc, kind, ns))
    except (TypeError, ValueError, AttributeError, yaml.YAMLError) as error:
        parts["bad"].append(f"{kind} {ns}/{_meta(doc).get('name', '?')}: cannot read it ({error})")


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
    return Service(str(_meta(doc)["name"]), ns, ports, _labels(spec.get("selector")))


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
    return Workload(kind, str(_meta(doc)["name"]), ns, _labels(_meta(pod).get("labels")), ports)


def _versions(doc: Doc) -> Iterator[tuple[str, str]]:
    """Istio's version from istiod's (pilot) or a sidecar's (proxyv2) image tag."""
    pod = doc if doc.get("kind") == "Pod" else _map(_map(doc.get("spec")).get("template"))
    spec = _map(pod.get("spec"))
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        match = VERSION_IMAGE.search(str(_map(container).get("image", "")))
        if match:
            where = f"{doc.get('kind')} {_meta(doc).get('namespace', '')}/{_meta(doc).get('name')}"
            yield match["tag"], f"image of {where}"


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
    )


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
    return EnvoyFilter(
        name=str(_meta(doc)["name"]),
        namespace=ns,
        patches=tuple(p for p in patches if p is not None),
        workload_selector=_labels(_map(selector).get("labels")) if selector else None,
        priority=int(spec.get("priority") or 0),
        created=str(_meta(doc).get("creationTimestamp") or ""),
    )


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
    if kind == "ConfigMap":
        if not MESH_CONFIGMAP.match(str(_meta(doc).get("name", ""))):
            return
        text = _map(doc.get("data")).get("mesh")
        mesh = _map(yaml.safe_load(text)) if isinstance(text, str) else {}
        where = f"ConfigMap {ns}/{_meta(doc).get('name')} (data.mesh)"
        yield mesh_settings(mesh, ns, where)
    else:
        mesh = _map(_map(doc.get("spec")).get("meshConfig"))
        yield mesh_settings(
            mesh, DEFAULT_ROOT_NAMESPACE, f"IstioOperator {ns}/{_meta(doc).get('name')}"
        )


def mesh_settings(mesh: Mapping[str, Any], namespace: str, source: str) -> MeshSettings:
    policy = str(mesh.get("h2UpgradePolicy") or "DO_NOT_UPGRADE").upper()
    export_to = mesh.get("defaultDestinationRuleExportTo") or ["*"]
    return MeshSettings(
        h2_upgrade_policy=H2UpgradePolicy(policy),
        root_namespace=str(mesh.get("rootNamespace") or namespace),
        default_dr_export_to=tuple(str(e) for e in export_to),
        source=source,
    )
