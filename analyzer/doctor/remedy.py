"""The fix for a failing port, as YAML ready for ``kubectl apply -f -``.

Two alternatives, as docs/design.md section 2 gives them: an EnvoyFilter that lets the server
workload's sidecar accept extended CONNECT (Istio 1.12 and later), or a DestinationRule that keeps
the hop on HTTP/1.1. The DestinationRule is the one that decided, changed at the level that
decided (port-level or rule-level), so applying it replaces rather than conflicts; a new one is
written only when no rule applies.

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
from analyzer.doctor.model import Decider, DestinationRule, Service, ServicePort

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
    old_istio: bool  # before 1.12 only the DestinationRule change works
    denying_priority: int | None = None  # an EnvoyFilter of this priority sets allow_connect false


@dataclass(frozen=True)
class Option:
    """One alternative fix: what it does, in a line, and the object to apply."""

    title: str
    manifest: dict[str, Any]


def remedy(fix: Fix) -> str:
    """Each option as its own YAML document, numbered: apply any one of them."""
    return "".join(_document(n, o) for n, o in enumerate(options(fix), start=1))


def options(fix: Fix) -> tuple[Option, ...]:
    """Before Istio 1.12 only the HTTP/1.1 hop works; from 1.12 accepting CONNECT comes first."""
    if fix.old_istio:
        only = " (the only fix: Istio < 1.12 cannot carry WebSocket over HTTP/2)"
        return (_keep_h1(fix, only),)
    return (_accept_connect(fix), _keep_h1(fix))


def _keep_h1(fix: Fix, why: str = "") -> Option:
    how = (
        "useClientProtocol: true (the port's protocol forces HTTP/2 otherwise)"
        if fix.decider is Decider.PORT_PROTOCOL
        else "h2UpgradePolicy: DO_NOT_UPGRADE"
    )
    title = f"keep the sidecar-to-sidecar hop on HTTP/1.1 with {how}{why}"
    return Option(title, destination_rule(fix))


def _accept_connect(fix: Fix) -> Option:
    title = "let the server sidecar accept WebSocket over HTTP/2 (Istio >= 1.12)"
    priority = _after(fix.denying_priority)
    if priority:
        title += f"; priority {priority} applies it after the EnvoyFilter that sets it false"
    return Option(title, envoy_filter(fix.service, priority))


def _after(denying_priority: int | None) -> int:
    """A priority that applies the fix after the patches that deny: Istio applies higher
    priorities later; at 0, the fix is ordered after denying patches of a lower priority."""
    if denying_priority is None or denying_priority < 0:
        return 0
    return denying_priority + 1


def _document(number: int, option: Option) -> str:
    return f"---\n# Option {number}: {option.title}\n{_dump(option.manifest)}"


def envoy_filter(service: Service, priority: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if service.selector:
        spec["workloadSelector"] = {"labels": dict(service.selector)}
    if priority:
        spec["priority"] = priority
    spec["configPatches"] = [
        {
            "applyTo": "NETWORK_FILTER",
            "match": {
                "context": "SIDECAR_INBOUND",
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


def destination_rule(fix: Fix) -> dict[str, Any]:
    name, namespace, spec = _base_rule(fix)
    http = _http_block(spec, fix.port.port if fix.port_level else None)
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


def _http_block(spec: dict[str, Any], port: int | None) -> MutableMapping[str, Any]:
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
