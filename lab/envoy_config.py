"""Envoy bootstraps for the two sidecars, as pure functions of a scenario.

They reproduce what istiod sends a sidecar for the reference workloads (websockets-client calling
the websockets-server Service, port 8080 -> targetPort 80): names of listeners, routes and
clusters, Istio's default retry policy, ``upgrade_configs`` and the access-log format. Only the
parts that change a WebSocket's fate or its log entries are kept; addresses are 127.0.0.1 ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analyzer.istio_formats import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT, WSLOG_EXTRA_FIELDS
from analyzer.vocab import Hop
from lab.scenarios import GATEWAY_HOST, Front, LogFormat, Scenario

Config = dict[str, Any]

SERVICE = "websockets-server"
NAMESPACE = "default"
FQDN = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
SERVICE_PORT = 8080
TARGET_PORT = 80
CLIENT_CLUSTER = f"outbound|{SERVICE_PORT}||{FQDN}"
SERVER_CLUSTER = f"inbound|{TARGET_PORT}||"
ROUTE_NAME = "default"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_HCM_TYPE = _HCM + "HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

# The TEXT counterpart of WSLOG_EXTRA_FIELDS, appended to Istio's TEXT format.
WSLOG_EXTRA_TEXT = '%UPSTREAM_PROTOCOL% %ACCESS_LOG_TYPE% "%REQ(UPGRADE)%" %CONNECTION_ID%'


@dataclass(frozen=True)
class Ports:
    """Every port of one scenario, all on 127.0.0.1."""

    app: int
    server_inbound: int
    server_admin: int
    client_outbound: int
    client_admin: int
    app_proxy: int = 0  # the HTTP/2 client app's own proxy (``app_protocol`` h2)
    app_proxy_admin: int = 0


def istio_retry_policy() -> Config:
    """Istio's default retry policy for an outbound HTTP route."""
    return {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    }


def server_hcm_http2_options(scenario: Scenario) -> Config | None:
    """What the allow_connect EnvoyFilter merges into the server sidecar's inbound HCM."""
    return {"allow_connect": True} if scenario.allow_connect else None


def client_cluster_protocol_options(scenario: Scenario) -> Config:
    """The outbound cluster's protocol options: what ``h2UpgradePolicy`` selects."""
    if scenario.hop is Hop.H2:
        explicit: Config = {"http2_protocol_options": {"max_concurrent_streams": 1073741824}}
    else:
        explicit = {"http_protocol_options": {}}
    return {
        _HTTP_OPTIONS: {
            "@type": "type.googleapis.com/" + _HTTP_OPTIONS,
            "explicit_http_config": explicit,
        }
    }


def log_format(scenario: Scenario, fmt: LogFormat) -> Config:
    """Istio's default format in the chosen encoding, plus wslog's fields for typed scenarios."""
    if fmt is LogFormat.JSON:
        fields = dict(ISTIO_JSON_FORMAT)
        if scenario.typed_format:
            fields.update(WSLOG_EXTRA_FIELDS)
        return {"json_format": fields}
    text = ISTIO_TEXT_FORMAT
    if scenario.typed_format:
        text = text.removesuffix("\n") + " " + WSLOG_EXTRA_TEXT + "\n"
    return {"text_format_source": {"inline_string": text}}


def access_log(path: str, scenario: Scenario, fmt: LogFormat) -> list[Config]:
    config = {"@type": _FILE_LOG_TYPE, "path": path, "log_format": log_format(scenario, fmt)}
    return [{"name": "envoy.access_loggers.file", "typed_config": config}]


def _address(port: int) -> Config:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(
    stat_prefix: str,
    route_config: Config,
    logs: list[Config],
    scenario: Scenario,
    *,
    remote_address: bool = False,
) -> Config:
    hcm: Config = {
        "@type": _HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}
        ],
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "use_remote_address": remote_address,
        "generate_request_id": True,
        "normalize_path": True,
        "server_name": "istio-envoy",
        "access_log": logs,
    }
    if scenario.periodic_log:
        hcm["access_log_options"] = {
            "access_log_flush_interval": "1s",
            "flush_access_log_on_new_request": True,
        }
    return hcm


def _listener(name: str, port: int, hcm: Config) -> Config:
    network_filter = {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [{"filters": [network_filter]}],
    }


def _static_cluster(name: str, port: int) -> Config:
    endpoint = {"endpoint": {"address": _address(port)}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _bootstrap(node_id: str, admin_port: int, listener: Config, cluster: Config) -> Config:
    return {
        "node": {"id": node_id, "cluster": node_id.split("~")[2].split(".")[0]},
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def outbound_domains() -> list[str]:
    names = [FQDN, f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}", SERVICE]
    return [d for name in names for d in (name, f"{name}:{SERVICE_PORT}")]


def outbound_cluster(scenario: Scenario, ports: Ports) -> Config:
    """The Service's outbound cluster, pointing at the server sidecar, with the protocol the
    DestinationRule's h2UpgradePolicy selects."""
    cluster = _static_cluster(CLIENT_CLUSTER, ports.server_inbound)
    cluster["typed_extension_protocol_options"] = client_cluster_protocol_options(scenario)
    return cluster


def outbound_route() -> Config:
    """The route action istiod gives an HTTP route to a Service: its outbound cluster, no
    timeout (WebSockets), Istio's default retries."""
    return {
        "cluster": CLIENT_CLUSTER,
        "timeout": "0s",
        "retry_policy": istio_retry_policy(),
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
    }


def client_route_config(scenario: Scenario) -> Config:
    route = outbound_route()
    virtual_host = {
        "name": f"{FQDN}:{SERVICE_PORT}",
        "domains": outbound_domains(),
        "routes": [{"name": ROUTE_NAME, "match": {"prefix": "/"}, "route": route}],
        "include_request_attempt_count": True,
    }
    return {"name": str(SERVICE_PORT), "virtual_hosts": [virtual_host], "validate_clusters": False}


def server_route_config() -> Config:
    route = {
        "cluster": SERVER_CLUSTER,
        "timeout": "0s",
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
    }
    virtual_host = {
        "name": f"inbound|http|{SERVICE_PORT}",
        "domains": ["*"],
        "routes": [{"name": ROUTE_NAME, "match": {"prefix": "/"}, "route": route}],
    }
    return {"name": SERVER_CLUSTER, "virtual_hosts": [virtual_host], "validate_clusters": False}


def client_bootstrap(scenario: Scenario, ports: Ports, log_path: str, fmt: LogFormat) -> Config:
    """The client sidecar: outbound listener for the Service port, cluster to the server sidecar."""
    logs = access_log(log_path, scenario, fmt)
    hcm = _hcm(f"outbound_0.0.0.0_{SERVICE_PORT}", client_route_config(scenario), logs, scenario)
    if scenario.client_allow_connect:  # the EnvoyFilter on SIDECAR_OUTBOUND
        hcm["http2_protocol_options"] = {"allow_connect": True}
    cluster = outbound_cluster(scenario, ports)
    listener = _listener(f"0.0.0.0_{SERVICE_PORT}", ports.client_outbound, hcm)
    node = "sidecar~127.0.0.1~websockets-client-sleep.default~default.svc.cluster.local"
    return _bootstrap(node, ports.client_admin, listener, cluster)


def server_bootstrap(scenario: Scenario, ports: Ports, log_path: str, fmt: LogFormat) -> Config:
    """The server sidecar: inbound listener, cluster ``inbound|80||`` to the application."""
    logs = access_log(log_path, scenario, fmt)
    hcm = _hcm(f"inbound_0.0.0.0_{TARGET_PORT}", server_route_config(), logs, scenario)
    http2 = server_hcm_http2_options(scenario)
    if http2 is not None:
        hcm["http2_protocol_options"] = http2
    listener = _listener("virtualInbound", ports.server_inbound, hcm)
    node = "sidecar~127.0.0.1~websockets-server.default~default.svc.cluster.local"
    return _bootstrap(
        node, ports.server_admin, listener, _static_cluster(SERVER_CLUSTER, ports.app)
    )


def gateway_route_config(scenario: Scenario) -> Config:
    """What istiod makes of the Gateway and VirtualService: one virtual host for the Gateway's
    host, routed to the Service's outbound cluster with Istio's default retries."""
    route = outbound_route()
    virtual_host = {
        "name": f"{GATEWAY_HOST}:{SERVICE_PORT}",
        "domains": [GATEWAY_HOST, f"{GATEWAY_HOST}:*"],
        "routes": [{"match": {"prefix": "/"}, "route": route}],
        "include_request_attempt_count": True,
    }
    return {
        "name": f"http.{SERVICE_PORT}",
        "virtual_hosts": [virtual_host],
        "validate_clusters": False,
    }


def gateway_bootstrap(scenario: Scenario, ports: Ports, log_path: str, fmt: LogFormat) -> Config:
    """An Istio ingress gateway (router node) in front of the server sidecar: listener
    ``0.0.0.0_8080``, the Service's ``outbound|...`` cluster, the client's address kept."""
    logs = access_log(log_path, scenario, fmt)
    route_config = gateway_route_config(scenario)
    hcm = _hcm(
        f"outbound_0.0.0.0_{SERVICE_PORT}", route_config, logs, scenario, remote_address=True
    )
    cluster = outbound_cluster(scenario, ports)
    listener = _listener(f"0.0.0.0_{SERVICE_PORT}", ports.client_outbound, hcm)
    node = (
        "router~127.0.0.1~istio-ingressgateway-6d8f9c7b5-x7k2p.istio-system~"
        "istio-system.svc.cluster.local"
    )
    return _bootstrap(node, ports.client_admin, listener, cluster)


def front_bootstrap(scenario: Scenario, ports: Ports, log_path: str, fmt: LogFormat) -> Config:
    """The proxy the client enters through: its sidecar, or an ingress gateway."""
    if scenario.front is Front.GATEWAY:
        return gateway_bootstrap(scenario, ports, log_path, fmt)
    return client_bootstrap(scenario, ports, log_path, fmt)


def app_proxy_bootstrap(ports: Ports) -> Config:
    """The client application's side of an HTTP/2 app: takes the test client's HTTP/1.1
    WebSocket and speaks HTTP/2 extended CONNECT (RFC 8441) to the client sidecar, as an app
    with an HTTP/2 WebSocket client would. It writes no access log: it is the app, not the mesh."""
    route = {"cluster": "app-to-sidecar", "timeout": "0s"}
    virtual_host = {
        "name": "app",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": route}],
    }
    hcm: Config = {
        "@type": _HCM_TYPE,
        "stat_prefix": "app",
        "codec_type": "HTTP1",
        "route_config": {"name": "app", "virtual_hosts": [virtual_host]},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}
        ],
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    }
    cluster = _static_cluster("app-to-sidecar", ports.client_outbound)
    cluster["typed_extension_protocol_options"] = {
        _HTTP_OPTIONS: {
            "@type": "type.googleapis.com/" + _HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    listener = _listener("app", ports.app_proxy, hcm)
    node = "app~127.0.0.1~websockets-client-sleep.default~default.svc.cluster.local"
    return _bootstrap(node, ports.app_proxy_admin, listener, cluster)
