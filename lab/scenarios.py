"""The lab's scenarios: each one is an Istio configuration (or an app behaviour) made concrete.

A scenario is plain data. ``envoy_config`` turns it into the two sidecars' bootstraps, ``apps``
into the server application and ``client`` into what the client does; the Istio YAML it mirrors is
kept beside it so ``wslog lab list`` and the testdata README can show both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from analyzer.errors import WslogError
from analyzer.vocab import Hop


class AppMode(StrEnum):
    """What the server application does with the upgrade request."""

    ECHO = "echo"
    DOWN = "down"
    REFUSE = "refuse"
    NO_UPGRADE = "no-upgrade"


class ClientMode(StrEnum):
    """What the client does once connected."""

    ECHO = "echo"
    DROP = "drop"
    HOLD = "hold"


class Front(StrEnum):
    """The proxy the client's request enters the mesh through."""

    SIDECAR = "sidecar"  # the client pod's sidecar (outbound listener)
    GATEWAY = "gateway"  # an Istio ingress gateway (its log is the scenario's client.log)


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)

DR_DO_NOT_UPGRADE = """\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: websockets-server
spec:
  host: websockets-server
  trafficPolicy:
    connectionPool:
      http:
        h2UpgradePolicy: DO_NOT_UPGRADE
"""

DR_UPGRADE = DR_DO_NOT_UPGRADE.replace("DO_NOT_UPGRADE", "UPGRADE")

ENVOYFILTER_ALLOW_CONNECT = (
    """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: h2-upgrade-wss
spec:
  workloadSelector:
    labels:
      app: websockets-server
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: MERGE
      value:
        typed_config:
          '@type': """
    + HCM_TYPE
    + """
          http2_protocol_options:
            allow_connect: true
"""
)

ENVOYFILTER_PERIODIC_LOG = (
    """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: access-log-flush
spec:
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: MERGE
      value:
        typed_config:
          '@type': """
    + HCM_TYPE
    + """
          access_log_options:
            access_log_flush_interval: 1s
            flush_access_log_on_new_request: true
"""
)

GATEWAY_HOST = "websockets.example.com"

GATEWAY_YAML = f"""\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: websockets-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["{GATEWAY_HOST}"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: websockets-server
spec:
  hosts: ["{GATEWAY_HOST}"]
  gateways: ["websockets-gateway"]
  http:
  - route:
    - destination: {{host: websockets-server, port: {{number: 8080}}}}
"""

ENVOYFILTER_CLIENT_ALLOW_CONNECT = (
    ENVOYFILTER_ALLOW_CONNECT.replace("name: h2-upgrade-wss", "name: h2-websocket-from-app")
    .replace("app: websockets-server", "app: websockets-client")
    .replace("context: SIDECAR_INBOUND", "context: SIDECAR_OUTBOUND")
)

MESHCONFIG_TYPED_FORMAT = """\
# meshConfig (IstioOperator / istio configmap): Istio's JSON keys plus wslog's extra fields
meshConfig:
  accessLogEncoding: JSON
  accessLogFormat: |
    {"start_time": "%START_TIME%", ...Istio's default keys...,
     "upstream_protocol": "%UPSTREAM_PROTOCOL%", "access_log_type": "%ACCESS_LOG_TYPE%",
     "upgrade": "%REQ(UPGRADE)%", "connection_id": "%CONNECTION_ID%"}
"""


@dataclass(frozen=True)
class Expected:
    """The fewest access-log entries each sidecar writes; the runner waits for them."""

    client: int
    server: int


@dataclass(frozen=True)
class Scenario:
    name: str
    mirrors: str
    shows: str
    istio_yaml: str
    hop: Hop
    expected: Expected
    allow_connect: bool = False
    app: AppMode = AppMode.ECHO
    client: ClientMode = ClientMode.ECHO
    connections: int = 1
    hold_ms: int = 0
    periodic_log: bool = False
    typed_format: bool = False
    front: Front = Front.SIDECAR
    host: str | None = None  # the Host the client dials, when not the front's usual one
    server_running: bool = True  # False: no server pod (sidecar and app) at all
    app_protocol: Hop = Hop.H1  # what the client app speaks to its sidecar
    client_allow_connect: bool = False  # EnvoyFilter allow_connect on the client's outbound HCM


ONE = Expected(client=1, server=1)
_H2_YAML = DR_UPGRADE + "---\n" + ENVOYFILTER_ALLOW_CONNECT

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="h1",
        mirrors="DestinationRule h2UpgradePolicy: DO_NOT_UPGRADE",
        shows="WebSocket over HTTP/1.1 on both hops, echo and close 1000",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        expected=ONE,
    ),
    Scenario(
        name="h2",
        mirrors="h2UpgradePolicy: UPGRADE + EnvoyFilter allow_connect: true (server)",
        shows="sidecar-to-sidecar hop is HTTP/2 extended CONNECT; server entry protocol HTTP/2",
        istio_yaml=_H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        expected=ONE,
    ),
    Scenario(
        name="h2-no-allow-connect",
        mirrors="h2UpgradePolicy: UPGRADE without the allow_connect EnvoyFilter",
        shows="the reference document's 503: server resets the CONNECT stream (DPE)",
        istio_yaml=DR_UPGRADE,
        hop=Hop.H2,
        expected=ONE,
    ),
    Scenario(
        name="app-down",
        mirrors="DO_NOT_UPGRADE; the container does not listen on targetPort 80",
        shows="client 503 URX after Istio's 2 retries; one server 503 UF entry per attempt",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        app=AppMode.DOWN,
        expected=Expected(client=1, server=3),
    ),
    Scenario(
        name="app-refuses",
        mirrors="DO_NOT_UPGRADE; the app answers 403 to the upgrade request",
        shows="403 via_upstream on both sides",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        app=AppMode.REFUSE,
        expected=ONE,
    ),
    Scenario(
        name="app-no-upgrade",
        mirrors="DO_NOT_UPGRADE; the app answers 200 without switching protocols",
        shows="200 websocket_handshake_unsuccessful on both sides",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        app=AppMode.NO_UPGRADE,
        expected=ONE,
    ),
    Scenario(
        name="app-no-upgrade-h2",
        mirrors="UPGRADE + allow_connect; the app answers 200 without switching protocols",
        shows="same app answer through an HTTP/2 hop",
        istio_yaml=_H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        app=AppMode.NO_UPGRADE,
        expected=ONE,
    ),
    Scenario(
        name="client-drop",
        mirrors="DO_NOT_UPGRADE; the client drops TCP without a close frame",
        shows="101 then DC (downstream_remote_disconnect) after one echo",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        client=ClientMode.DROP,
        expected=ONE,
    ),
    Scenario(
        name="client-drop-h2",
        mirrors="UPGRADE + allow_connect; the client drops TCP without a close frame",
        shows="client 101 DC; the server sidecar sees the HTTP/2 stream reset",
        istio_yaml=_H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        client=ClientMode.DROP,
        expected=ONE,
    ),
    Scenario(
        name="long-lived",
        mirrors="DO_NOT_UPGRADE + EnvoyFilter access_log_options (flush every 1s)",
        shows="start, periodic and end entries for one connection, Istio's format only",
        istio_yaml=DR_DO_NOT_UPGRADE + "---\n" + ENVOYFILTER_PERIODIC_LOG,
        hop=Hop.H1,
        client=ClientMode.HOLD,
        hold_ms=3500,
        periodic_log=True,
        expected=Expected(client=4, server=4),
    ),
    Scenario(
        name="long-lived-typed",
        mirrors="long-lived + %ACCESS_LOG_TYPE% and %UPSTREAM_PROTOCOL% in the format (UPGRADE)",
        shows="the same over an HTTP/2 hop, each entry saying its type and upstream protocol",
        istio_yaml=_H2_YAML
        + "---\n"
        + ENVOYFILTER_PERIODIC_LOG
        + "---\n"
        + MESHCONFIG_TYPED_FORMAT,
        hop=Hop.H2,
        allow_connect=True,
        client=ClientMode.HOLD,
        hold_ms=3500,
        periodic_log=True,
        typed_format=True,
        expected=Expected(client=4, server=4),
    ),
    Scenario(
        name="concurrent-h2",
        mirrors="UPGRADE + allow_connect; three WebSockets at once",
        shows="three streams multiplexed on one HTTP/2 connection between the sidecars",
        istio_yaml=_H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        connections=3,
        hold_ms=300,
        expected=Expected(client=3, server=3),
    ),
)

SCENARIOS += (
    Scenario(
        name="gateway-h1",
        mirrors="Gateway + VirtualService to the Service; DestinationRule DO_NOT_UPGRADE",
        shows="WebSocket through an ingress gateway: the gateway writes the client-side entry",
        istio_yaml=GATEWAY_YAML + "---\n" + DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        front=Front.GATEWAY,
        expected=ONE,
    ),
    Scenario(
        name="gateway-h2",
        mirrors="Gateway + VirtualService; UPGRADE + EnvoyFilter allow_connect (server)",
        shows="gateway-to-sidecar hop over HTTP/2 extended CONNECT",
        istio_yaml=GATEWAY_YAML + "---\n" + _H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        front=Front.GATEWAY,
        expected=ONE,
    ),
    Scenario(
        name="gateway-no-route",
        mirrors="Gateway + VirtualService; the client dials a host no VirtualService binds",
        shows="the gateway's own 404 NR: no cluster, no server entry",
        istio_yaml=GATEWAY_YAML,
        hop=Hop.H1,
        front=Front.GATEWAY,
        host="unknown.example.com",
        server_running=False,
        expected=Expected(client=1, server=0),
    ),
    Scenario(
        name="gateway-server-down",
        mirrors="Gateway + VirtualService; no server pod answers (all endpoints gone)",
        shows="the gateway's 503 UF,URX after Istio's retries, no server entry",
        istio_yaml=GATEWAY_YAML + "---\n" + DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        front=Front.GATEWAY,
        server_running=False,
        expected=Expected(client=1, server=0),
    ),
)

SCENARIOS += (
    Scenario(
        name="app-h2-no-allow-connect",
        mirrors="the client app speaks HTTP/2 extended CONNECT; Istio's client sidecar as it is",
        shows="the client sidecar refuses the app's extended CONNECT (DPE): no allow_connect on "
        "SIDECAR_OUTBOUND either",
        istio_yaml=DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        app_protocol=Hop.H2,
        server_running=False,
        expected=Expected(client=1, server=0),
    ),
    Scenario(
        name="h2-h1",
        mirrors="HTTP/2 client app + EnvoyFilter allow_connect on SIDECAR_OUTBOUND; DO_NOT_UPGRADE",
        shows="app-to-sidecar hop HTTP/2, sidecar-to-sidecar HTTP/1.1",
        istio_yaml=ENVOYFILTER_CLIENT_ALLOW_CONNECT + "---\n" + DR_DO_NOT_UPGRADE,
        hop=Hop.H1,
        app_protocol=Hop.H2,
        client_allow_connect=True,
        expected=ONE,
    ),
    Scenario(
        name="h2-h2",
        mirrors="HTTP/2 client app + allow_connect on both sidecars; UPGRADE",
        shows="HTTP/2 extended CONNECT on both hops",
        istio_yaml=ENVOYFILTER_CLIENT_ALLOW_CONNECT + "---\n" + _H2_YAML,
        hop=Hop.H2,
        allow_connect=True,
        app_protocol=Hop.H2,
        client_allow_connect=True,
        expected=ONE,
    ),
)

BY_NAME: dict[str, Scenario] = {s.name: s for s in SCENARIOS}


class UnknownScenarioError(WslogError, ValueError):
    pass


def select(names: list[str]) -> tuple[Scenario, ...]:
    """The named scenarios in the order given, or all of them when no name is given."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UnknownScenarioError(
            f"unknown scenario(s): {', '.join(unknown)}; `wslog lab list` shows the known ones"
        )
    return tuple(BY_NAME[n] for n in dict.fromkeys(names)) if names else SCENARIOS
