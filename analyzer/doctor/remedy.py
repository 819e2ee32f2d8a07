"""The fix for a failing port, as YAML ready for ``kubectl apply -f -``.

Two alternatives, as docs/design.md section 2 gives them: an EnvoyFilter that lets the server
proxy accept extended CONNECT (Istio 1.12 and later; context SIDECAR_INBOUND for a sidecar,
GATEWAY for a gateway; none for a MESH_EXTERNAL host, which no proxy of the mesh serves), or a
change that keeps the hop on HTTP/1.1. The DestinationRule is the one that decided, changed at the
level that decided (subset, port-level or rule-level), so applying it replaces rather than
conflicts; a new one is written only when no rule applies. Where the release's rules leave no
DestinationRule fix (``useClientProtocol`` cannot beat an http2/grpc port before 1.28), the port
is renamed; where an EnvoyFilter CLUSTER patch decided, that filter is re-applied without it.

Either alternative alone fixes the port, so each is its own YAML document, opened by ``---`` and a
``# Option N: ...`` comment that names it: a reader copies one document, and a program splits them
with ``yaml.safe_load_all``. Nothing is indented or folded, whatever the terminal's width.
"""

from __future__ import annotations

import copy
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import yaml

from analyzer.doctor.istio import resolve_host
from analyzer.doctor.model import (
    Decider,
    DestinationRule,
    EnvoyFilter,
    ProxyKind,
    Service,
    ServicePort,
)
from analyzer.doctor.versions import IstioVersion, VersionRule

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
UNFOLDED = 1 << 30  # PyYAML's line width: no line of a remedy is ever folded


@dataclass(frozen=True)
class Fix:
    service: Service
    port: ServicePort
    host: str
    decider: Decider
    rule: DestinationRule | None
    port_level: bool
    version: IstioVersion  # the release the fix must work on
    denying_priority: int | None = None  # an EnvoyFilter of this priority sets allow_connect false
    subset: str | None = None  # the subset whose policy decided
    proxy: ProxyKind = ProxyKind.SIDECAR
    external: bool = False
    cluster_filter: EnvoyFilter | None = None
    cluster_patch_index: int | None = None
    h2_without_patch: bool = False  # the CLUSTER patch decided, but the hop is HTTP/2 without it

    @property
    def old_istio(self) -> bool:
        """Before 1.12 only keeping the hop on HTTP/1.1 works."""
        return not self.version.has(VersionRule.ALLOW_CONNECT)


@dataclass(frozen=True)
class Option:
    """One alternative fix: what it does, in a line, and the object to apply."""

    title: str
    manifest: dict[str, Any]


def remedy(fix: Fix) -> str:
    """Each option as its own YAML document, numbered: apply any one of them."""
    return "".join(_document(n, o) for n, o in enumerate(options(fix), start=1))


def options(fix: Fix) -> tuple[Option, ...]:
    """Before Istio 1.12 only the HTTP/1.1 hop works; from 1.12 accepting CONNECT comes first
    (where a proxy of the mesh serves the host)."""
    if fix.old_istio:
        only = " (the only fix: Istio < 1.12 cannot carry WebSocket over HTTP/2)"
        return (_keep_h1(fix, only),)
    if fix.external:
        return (_keep_h1(fix, " (the only fix: no proxy of the mesh serves the host)"),)
    if fix.h2_without_patch:  # removing the patch alone leaves the hop on HTTP/2
        return (_accept_connect(fix),)
    return (_accept_connect(fix), _keep_h1(fix))


def _keep_h1(fix: Fix, why: str = "") -> Option:
    if fix.decider is Decider.CLUSTER_PATCH and fix.cluster_filter is not None:
        title = f"re-apply {fix.cluster_filter.ref} without its CLUSTER patch{why}"
        return Option(title, without_cluster_patch(fix.cluster_filter, fix.cluster_patch_index))
    if fix.decider is Decider.PORT_PROTOCOL and not fix.version.has(
        VersionRule.CLIENT_PROTOCOL_OVER_PORT
    ):
        title = (
            f"keep the hop on HTTP/1.1 by naming the port for HTTP/1.1 (useClientProtocol "
            f"cannot beat the port's protocol before Istio 1.28){why}"
        )
        return Option(title, renamed_port(fix.service, fix.port))
    how = (
        "useClientProtocol: true (the port's protocol forces HTTP/2 otherwise)"
        if fix.decider is Decider.PORT_PROTOCOL
        else "h2UpgradePolicy: DO_NOT_UPGRADE"
    )
    title = f"keep the sidecar-to-server hop on HTTP/1.1 with {how}{why}"
    return Option(title, destination_rule(fix))


def _accept_connect(fix: Fix) -> Option:
    who = "gateway" if fix.proxy is ProxyKind.GATEWAY else "sidecar"
    title = f"let the server {who} accept WebSocket over HTTP/2 (Istio >= 1.12)"
    priority = _after(fix.denying_priority)
    if priority:
        title += f"; priority {priority} applies it after the EnvoyFilter that sets it false"
    return Option(title, envoy_filter(fix.service, priority, fix.proxy))


def _after(denying_priority: int | None) -> int:
    """A priority that applies the fix after the patches that deny: Istio applies higher
    priorities later; at 0, the fix is ordered after denying patches of a lower priority."""
    if denying_priority is None or denying_priority < 0:
        return 0
    return denying_priority + 1


def _document(number: int, option: Option) -> str:
    return f"---\n# Option {number}: {option.title}\n{_dump(option.manifest)}"


def envoy_filter(
    service: Service, priority: int = 0, proxy: ProxyKind = ProxyKind.SIDECAR
) -> dict[str, Any]:
    context = "GATEWAY" if proxy is ProxyKind.GATEWAY else "SIDECAR_INBOUND"
    spec: dict[str, Any] = {}
    if service.selector:
        spec["workloadSelector"] = {"labels": dict(service.selector)}
    if priority:
        spec["priority"] = priority
    spec["configPatches"] = [
        {
            "applyTo": "NETWORK_FILTER",
            "match": {
                "context": context,
                "listener": {"filterChain": {"filter": {"name": HCM_NAME}}},
            },
            "patch": {
                "operation": "MERGE",
                "value": {
                    "typed_config": {
                        "@type": HCM_TYPE,
                        "http2_protocol_options": {"allow_connect": True},
                    }
                },
            },
        }
    ]
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": f"{service.name}-allow-connect", "namespace": service.namespace},
        "spec": spec,
    }


def without_cluster_patch(ef: EnvoyFilter, index: int | None) -> dict[str, Any]:
    """The filter as it was, less the CLUSTER patch that made the hop HTTP/2."""
    spec = copy.deepcopy(dict(ef.spec))
    patches = list(spec.get("configPatches") or [])
    spec["configPatches"] = [p for i, p in enumerate(patches) if i != index]
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": ef.name, "namespace": ef.namespace},
        "spec": spec,
    }


def renamed_port(service: Service, port: ServicePort) -> dict[str, Any]:
    """The Service (or ServiceEntry) with the port named, or declared, HTTP."""
    spec = copy.deepcopy(dict(service.spec))
    for entry in spec.get("ports") or []:
        number = entry.get("number") if service.kind == "ServiceEntry" else entry.get("port")
        if int(number or -1) != port.port:
            continue
        if service.kind == "ServiceEntry":
            entry["protocol"] = "HTTP"
        else:
            entry["name"] = _http_name(port.name)
            entry.pop("appProtocol", None)
    api = "networking.istio.io/v1beta1" if service.kind == "ServiceEntry" else "v1"
    return {
        "apiVersion": api,
        "kind": service.kind,
        "metadata": {"name": service.name, "namespace": service.namespace},
        "spec": spec,
    }


def _http_name(name: str) -> str:
    _, dash, rest = name.partition("-")
    return f"http-{rest}" if dash and rest else "http"


def destination_rule(fix: Fix) -> dict[str, Any]:
    name, namespace, spec = _base_rule(fix)
    holder = _subset_holder(spec, fix.subset)
    http = _http_block(holder, fix.port.port if fix.port_level else None)
    if fix.decider is Decider.PORT_PROTOCOL:
        http["useClientProtocol"] = True
    else:
        http["h2UpgradePolicy"] = "DO_NOT_UPGRADE"
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _base_rule(fix: Fix) -> tuple[str, str, dict[str, Any]]:
    """The deciding rule when it names this Service; a copy narrowed to this Service's host
    when it is a wildcard (so other Services keep their policy); else a new rule."""
    rule, service = fix.rule, fix.service
    if rule is None:
        return service.name, service.namespace, {"host": fix.host}
    spec = copy.deepcopy(dict(rule.spec))
    if resolve_host(rule.host, rule.namespace) == fix.host:
        return rule.name, rule.namespace, spec
    spec["host"] = fix.host
    spec.pop("exportTo", None)
    return f"{service.name}-h1", service.namespace, spec


def _subset_holder(spec: dict[str, Any], subset: str | None) -> MutableMapping[str, Any]:
    """The subset whose traffic policy decided, or the rule itself."""
    for entry in spec.get("subsets") or [] if subset else []:
        if entry.get("name") == subset:
            holder: MutableMapping[str, Any] = entry
            return holder
    return spec


def _http_block(spec: MutableMapping[str, Any], port: int | None) -> MutableMapping[str, Any]:
    policy = spec.setdefault("trafficPolicy", {})
    if port is not None:
        for entry in policy.get("portLevelSettings") or []:
            if int(entry.get("port", {}).get("number", -1)) == port:
                return _pool_http(entry)
    return _pool_http(policy)


def _pool_http(holder: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    pool = holder.setdefault("connectionPool", {})
    http: MutableMapping[str, Any] = pool.setdefault("http", {})
    return http


def _dump(obj: dict[str, Any]) -> str:
    """Block style, never folded: a long value (the ``@type`` URL) stays on its key's line."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=UNFOLDED)
