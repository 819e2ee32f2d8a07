"""What a failed WebSocket upgrade looks like in Envoy's access log (docs/design.md section 1).

Each signature is written here once, as a polars expression over entry columns; ``prefix``
reads the same fields from ``classify``'s flattened ``c_``/``s_``/``u_`` columns. A signature
says *what* happened, never *which side* logged it: that is ``analyzer.side``'s rule.

A refused extended CONNECT: an HTTP/2 hop carries a WebSocket as an extended CONNECT (RFC
8441), and a sidecar without ``allow_connect`` resets the stream and writes HTTP/2, ``DPE``,
no response code, ``http2.invalid.header.field`` and no request id. The server sidecar writes
it on an HTTP/2 mesh hop (its client sidecar then answers the app 503); a client sidecar writes
the very same entry when its own app speaks HTTP/2, so the entry does not tell the side.
"""

from __future__ import annotations

import polars as pl

CONNECT_REFUSED_FLAG = "DPE"
CONNECT_REFUSED_DETAILS = "http2.invalid.header.field"
RESET_BEFORE_RESPONSE = "upstream_reset_before_response_started"
HANDSHAKE_UNSUCCESSFUL = "websocket_handshake_unsuccessful"


def connect_rejected(prefix: str = "") -> pl.Expr:
    """The entry of a sidecar that refused an extended CONNECT: HTTP/2, ``DPE``, no response
    code, and Envoy's header-field details when the format logs them."""
    details = pl.col(f"{prefix}response_code_details")
    flags = pl.col(f"{prefix}response_flags").fill_null("")
    return (
        (pl.col(f"{prefix}protocol") == "HTTP/2")
        & flags.str.contains(CONNECT_REFUSED_FLAG, literal=True)
        & (pl.col(f"{prefix}response_code").fill_null(0) == 0)
        & (details.is_null() | (details == CONNECT_REFUSED_DETAILS))
    )


def connect_reset_upstream(prefix: str = "") -> pl.Expr:
    """A client sidecar's answer when the server sidecar refused its extended CONNECT: 503
    after an HTTP/2 upstream stream was reset before any response. Readable only where the
    format logs %UPSTREAM_PROTOCOL%; any HTTP/2 request reset early looks the same, so this
    names the cause of a connection already known as a WebSocket and is never evidence of one."""
    details = pl.col(f"{prefix}response_code_details")
    return (
        (pl.col(f"{prefix}upstream_protocol") == "HTTP/2")
        & (pl.col(f"{prefix}response_code") == 503)
        & details.str.starts_with(RESET_BEFORE_RESPONSE)
    )


def handshake_unsuccessful(prefix: str = "") -> pl.Expr:
    """The app answered an upgrade request without switching protocols (Envoy's details)."""
    return (pl.col(f"{prefix}response_code_details") == HANDSHAKE_UNSUCCESSFUL).fill_null(False)
