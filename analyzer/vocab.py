"""The shared vocabulary (docs/design.md section 2).

These strings are an API: CLI tables, JSON documents, metric labels, dashboards and alerts all
use them verbatim, so they live in one place as closed enums.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Side(StrEnum):
    CLIENT = "client"
    SERVER = "server"
    GATEWAY = "gateway"


class UpgradePath(StrEnum):
    H1_H1 = "h1-h1"
    H1_H2 = "h1-h2"
    H2_H1 = "h2-h1"
    H2_H2 = "h2-h2"
    UNKNOWN = "unknown"


class Hop(StrEnum):
    """The protocol of one hop: the halves of an ``UpgradePath``."""

    H1 = "h1"
    H2 = "h2"


class Outcome(StrEnum):
    UPGRADED = "upgraded"
    REJECTED = "rejected"
    FAILED = "failed"
    OPEN = "open"


class Cause(StrEnum):
    NONE = ""
    H2_CONNECT_NOT_ALLOWED = "h2-connect-not-allowed"
    UPSTREAM_CONNECT_FAILURE = "upstream-connect-failure"
    NO_HEALTHY_UPSTREAM = "no-healthy-upstream"
    NO_ROUTE = "no-route"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_RESET = "upstream-reset"
    DOWNSTREAM_DISCONNECT = "downstream-disconnect"
    APP_REFUSED = "app-refused"
    APP_DID_NOT_UPGRADE = "app-did-not-upgrade"
    OTHER = "other"


class Pairing(StrEnum):
    PAIRED = "paired"
    CLIENT_ONLY = "client-only"
    SERVER_ONLY = "server-only"
    UNPAIRED = "unpaired"  # one entry whose side no evidence told (see analyzer.side)


# The sides a connection's entries came from, by its pairing: a metric label.
PAIRING_SIDES = {
    Pairing.PAIRED: "both",
    Pairing.CLIENT_ONLY: Side.CLIENT.value,
    Pairing.SERVER_ONLY: Side.SERVER.value,
    Pairing.UNPAIRED: "unknown",
}


class Eviction(StrEnum):
    """Why a WebSocket left the correlation state without both sides (a metric label)."""

    WINDOW = "window"  # its window passed
    SIZE_CAP = "size-cap"  # released early: --max-pending was reached


class Direction(StrEnum):
    """Which way a connection's bytes went, as the client sidecar saw them (a metric label)."""

    SENT = "sent"
    RECEIVED = "received"


class Evidence(StrEnum):
    """Why a connection counts as a WebSocket, strongest first."""

    UPGRADE_HEADER = "upgrade-header"  # %REQ(UPGRADE)% says websocket
    SWITCHED = "101"
    HANDSHAKE_UNSUCCESSFUL = "handshake-unsuccessful"  # the app answered without upgrading
    H2_CONNECT_REJECTED = "h2-connect-rejected"  # a sidecar refused an extended CONNECT
    PATH = "path"  # its destination and path showed evidence elsewhere
    ALL = "all"  # none, kept by --all


class TransportFailure(StrEnum):
    """What ``%UPSTREAM_TRANSPORT_FAILURE_REASON%`` says, when the format logs it."""

    NONE = ""
    TLS = "tls"
    REFUSED = "connection-refused"
    TIMEOUT = "timeout"
    OTHER = "other"


class LineResult(StrEnum):
    """Every input line is exactly one of these."""

    ENTRY = "entry"
    NOT_ACCESS_LOG = "not_access_log"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Explanation:
    summary: str
    remedy: str


EXPLANATIONS: dict[Cause, Explanation] = {
    Cause.H2_CONNECT_NOT_ALLOWED: Explanation(
        "The sidecar-to-sidecar hop was upgraded to HTTP/2 (DestinationRule h2UpgradePolicy: "
        "UPGRADE) but the server sidecar does not accept extended CONNECT (RFC 8441), so it reset "
        "the stream (DPE, http2.invalid.header.field) and the client sidecar answered 503.",
        "Apply an EnvoyFilter on the server workload that merges "
        "http2_protocol_options.allow_connect: true into its SIDECAR_INBOUND "
        "http_connection_manager (Istio >= 1.12), or set the DestinationRule's "
        "connectionPool.http.h2UpgradePolicy: DO_NOT_UPGRADE (the only fix before Istio 1.12).",
    ),
    Cause.UPSTREAM_CONNECT_FAILURE: Explanation(
        "The server sidecar could not open a connection to the application (UF/URX): the app is "
        "not listening on the target port, crashed, or refuses connections.",
        "Check that the container listens on the Service's targetPort (kubectl get endpoints, "
        "kubectl logs of the app); the port name/targetPort in the Service must match the app.",
    ),
    Cause.NO_HEALTHY_UPSTREAM: Explanation(
        "Envoy had no healthy endpoint for the destination (UH): no ready pods, or all ejected by "
        "outlier detection.",
        "Check the Deployment's ready replicas and readiness probe, and the DestinationRule's "
        "outlierDetection settings.",
    ),
    Cause.NO_ROUTE: Explanation(
        "Envoy found no route or cluster for the request (NR/NC): the host or port is not known "
        "to the mesh, or a VirtualService does not match.",
        "Check the Service name and port the client dials, the VirtualService hosts and matches, "
        "and the Sidecar resource's egress hosts.",
    ),
    Cause.UPSTREAM_TIMEOUT: Explanation(
        "The upgrade request timed out before the application answered (UT), or the connection "
        "hit an idle/stream timeout.",
        "Raise the route timeout (VirtualService timeout: 0s disables it for WebSockets) or the "
        "idle timeout (DestinationRule connectionPool.http.idleTimeout); send WebSocket pings.",
    ),
    Cause.UPSTREAM_RESET: Explanation(
        "The upstream connection was reset before the upgrade completed (UR/UC before any "
        "response, or a protocol error).",
        "Check the application's logs for crashes or protocol errors and the server sidecar's "
        "entry for the reset reason (response_code_details).",
    ),
    Cause.DOWNSTREAM_DISCONNECT: Explanation(
        "The client went away before the upgrade completed (DC/DR before a 101).",
        "Usually client-side: check client timeouts and network; nothing to change in the mesh.",
    ),
    Cause.APP_REFUSED: Explanation(
        "The application answered the upgrade request with an error status (4xx/5xx "
        "via_upstream): it refused the WebSocket.",
        "Check the application's authentication, Origin checks and path routing for this "
        "endpoint; the mesh delivered the request.",
    ),
    Cause.APP_DID_NOT_UPGRADE: Explanation(
        "The application answered without switching protocols (websocket_handshake_unsuccessful):"
        " the endpoint is not a WebSocket endpoint or the Upgrade header did not reach it.",
        "Point the client at the WebSocket endpoint; check that no proxy in front of the app "
        "strips Upgrade/Connection headers.",
    ),
    Cause.OTHER: Explanation(
        "The upgrade failed for a reason wslog does not classify; see the entries' response "
        "flags and response_code_details.",
        "Read the client and server entries shown for this connection.",
    ),
}


# Where who logged the failure, or how the transport failed, changes what it means: keyed by
# (cause, reporter side or "", transport failure or ""), most specific first in ``explain``.
_CLIENT_CONNECT = Explanation(
    "The client sidecar got no usable answer from the server's pods: it could not connect (UF) "
    "or every retry was answered 503 (URX: retries exhausted), which is most often the server "
    "sidecar failing to reach the app, else the app itself answering 503. The server sidecar's "
    "log tells which.",
    "Give wslog the server pod's istio-proxy log too; check the server pods are Running and "
    "Ready and that the app listens on the Service's targetPort.",
)
_TLS_TO_SERVER = Explanation(
    "The TLS handshake with the server's sidecar failed (upstream_transport_failure_reason): "
    "an mTLS mismatch (PeerAuthentication STRICT while a DestinationRule sets tls mode DISABLE, "
    'or a server pod without a sidecar) or a proxy without its certificate yet ("Secret is not '
    'supplied by SDS").',
    "Run istioctl x describe pod on a server pod; align PeerAuthentication and the "
    "DestinationRule's trafficPolicy.tls; restart the proxy if its certificate never arrived.",
)
_REFUSED_BY_SERVER = Explanation(
    "The server's pod refused the connection (connection refused): nothing listens on the "
    "port the client sidecar dialled, or the pod is shutting down.",
    "Check the Service's port and targetPort against the pods' ports and that the pods are "
    "Ready (kubectl get endpoints).",
)
_TIMEOUT_TO_SERVER = Explanation(
    "Connecting to the server's pod timed out: a NetworkPolicy or firewall drops the traffic, "
    "or the pod is overloaded.",
    "Check NetworkPolicies between the namespaces and the pod's load; the DestinationRule's "
    "connectionPool.tcp.connectTimeout bounds the wait.",
)
VARIANTS: dict[tuple[Cause, str, str], Explanation] = {
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.CLIENT, ""): _CLIENT_CONNECT,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.GATEWAY, ""): Explanation(
        "The gateway got no usable answer from the service's pods: it could not connect (UF) "
        "or every retry was answered 503 (URX).",
        "Check the service's pods are Running and Ready and listen on its targetPort; give "
        "wslog their istio-proxy logs to see the server side.",
    ),
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.CLIENT, TransportFailure.TLS): _TLS_TO_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.GATEWAY, TransportFailure.TLS): _TLS_TO_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.CLIENT, TransportFailure.REFUSED): _REFUSED_BY_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.GATEWAY, TransportFailure.REFUSED): _REFUSED_BY_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.CLIENT, TransportFailure.TIMEOUT): _TIMEOUT_TO_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.GATEWAY, TransportFailure.TIMEOUT): _TIMEOUT_TO_SERVER,
    (Cause.UPSTREAM_CONNECT_FAILURE, Side.SERVER, TransportFailure.TLS): Explanation(
        "The server sidecar's connection to the application failed TLS: the app serves TLS on "
        "a port the Service declares as plain HTTP, or the other way round.",
        "Name the Service port https-*/tls-* (or set appProtocol) when the app serves TLS, or "
        "make the app serve plain HTTP behind the sidecar.",
    ),
    (Cause.H2_CONNECT_NOT_ALLOWED, Side.CLIENT, ""): Explanation(
        "The client sidecar refused its application's HTTP/2 extended CONNECT (RFC 8441) with a "
        "stream reset (DPE, http2.invalid.header.field): the app speaks WebSocket over HTTP/2 and "
        "Istio does not set allow_connect on the sidecar's outbound listener.",
        "Apply an EnvoyFilter on the client workload that merges http2_protocol_options."
        "allow_connect: true into its SIDECAR_OUTBOUND http_connection_manager, or make the app "
        "open its WebSockets over HTTP/1.1.",
    ),
    (Cause.H2_CONNECT_NOT_ALLOWED, "", ""): Explanation(
        "A sidecar refused an HTTP/2 extended CONNECT (DPE, http2.invalid.header.field), and "
        "nothing in the input says which: the server sidecar on an HTTP/2 mesh hop "
        "(h2UpgradePolicy: UPGRADE) when a client entry answered 503 for it, else the client "
        "sidecar refusing its own app's HTTP/2 WebSocket.",
        "Give wslog both sidecars' logs (each pod's log as its own file, or kubectl logs "
        "--prefix). The fix is allow_connect: true on the refusing sidecar's "
        "http_connection_manager (SIDECAR_INBOUND for the server, SIDECAR_OUTBOUND for the "
        "client), or DestinationRule h2UpgradePolicy: DO_NOT_UPGRADE for the mesh hop.",
    ),
    (Cause.NO_ROUTE, Side.GATEWAY, ""): Explanation(
        "The gateway has no route for this host and path (NR/NC): no VirtualService bound to "
        "the Gateway matches it, or its destination host is unknown to the mesh.",
        "Check the VirtualService's hosts, gateways and match against the request's host and "
        "path, and that its destination host and port exist.",
    ),
}


def explain(cause: Cause, reporter: str = "", transport: str = "") -> Explanation | None:
    """The explanation and remedy of a cause, as the side that logged it (``Side`` value, or
    "" when unknown) and the transport failure (``TransportFailure``) change it; ``None`` for
    the empty cause."""
    for key in ((cause, reporter, transport), (cause, reporter, "")):
        if key in VARIANTS:
            return VARIANTS[key]
    return EXPLANATIONS.get(cause)


class RejectReason(StrEnum):
    """Why a line that looked like an access-log entry could not be decoded (bounded set)."""

    INVALID_JSON = "invalid-json"
    TRUNCATED = "truncated"
    BAD_FIELD = "bad-field-value"
    MISSING_FIELD = "missing-field"
    FORMAT_MISMATCH = "format-mismatch"
    BAD_FRAMING = "bad-framing"
    ENCODING = "encoding"
    TOO_LONG = "too-long"
