"""Istio's default access-log formats, as Istio configures its sidecars.

The lab configures its Envoys with these exact strings, and the decoder recognises them, so both
sides of the project agree on what "Istio's default format" is. Generations of the TEXT format are
kept because saved logs from old clusters are still analysed.

Generations (istio/istio ``pilot/pkg/model/telemetry_logging.go`` and its predecessors,
``pilot/pkg/networking/core/v1alpha3/listener.go`` before 1.6):
- 1.0.0-1.0.2: no format set, so Envoy's default; 1.0.3-1.0.x: ``EnvoyHTTPLogFormat`` (path and
  protocol without a space between them, from istio/istio#8926) and ``EnvoyTCPLogFormat``;
- 1.1: ``"%DYNAMIC_METADATA(istio.mixer:status)%"`` (istio/istio#11471) and
  ``%REQUESTED_SERVER_NAME%``; 1.2: ``"%UPSTREAM_TRANSPORT_FAILURE_REASON%"``; 1.3:
  ``%ROUTE_NAME%`` (istio/istio#16237);
- 1.3 to 1.7: the Mixer status after the flags;
- 1.8: Mixer field dropped;
- 1.9: ``%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%`` added (istio/istio#27903);
- 1.23: ``%UPSTREAM_CLUSTER%`` replaced by ``%UPSTREAM_CLUSTER_RAW%`` in TEXT for proxies >= 1.23
  (istio/istio#52384, cherry-picked to release-1.23), and in JSON later (istio/istio#54224,
  fixing istio/istio#54219: the JSON field showed the cluster's ``alt_stat_name`` with a trailing
  ``;``). The TEXT layout is unchanged, so a 1.23+ line is indistinguishable from a 1.9 line; the
  decoder strips that trailing ``;`` from ``upstream_cluster`` whatever the generation.
"""

from __future__ import annotations

# Istio's current default JSON encoding (meshConfig.accessLogEncoding: JSON): key -> operator.
ISTIO_JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",  # %UPSTREAM_CLUSTER% before Istio 1.25
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
}

_HEAD = '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
_TAIL = (
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
    '"%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

_TAIL_1_2 = _TAIL.replace(" %ROUTE_NAME%\n", "\n")  # route name arrived in 1.3
_MIXER = '%RESPONSE_CODE% %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%" '

# Istio's TEXT encoding by generation (newest last). The current one is what the lab writes.
ISTIO_TEXT_FORMATS: dict[str, str] = {
    # 1.0.3-1.0.x (EnvoyHTTPLogFormat): Istio's own first format, with path and protocol run
    # together (no space between them in the Go string); 1.0.0-1.0.2 wrote Envoy's default.
    "istio-text-1.0": (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%%PROTOCOL%" '
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
        "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%\n"
    ),
    # 1.0.3-1.0.x TCP proxies (EnvoyTCPLogFormat).
    "istio-text-1.0-tcp": (
        "[%START_TIME%] %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
        '"%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% '
        "%DOWNSTREAM_REMOTE_ADDRESS%\n"
    ),
    # 1.1: Mixer status and the requested server name, no transport failure reason, no route.
    "istio-text-1.1": _HEAD + _MIXER + _TAIL_1_2,
    # 1.2: the upstream transport failure reason added.
    "istio-text-1.2": _HEAD + _MIXER + '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" ' + _TAIL_1_2,
    "istio-text-1.7": _HEAD
    + '%RESPONSE_CODE% %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%" '
    + '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    + _TAIL,
    "istio-text-1.8": _HEAD
    + '%RESPONSE_CODE% %RESPONSE_FLAGS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    + _TAIL,
    "istio-text-1.9": _HEAD
    + "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    + '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    + _TAIL,
    "istio-text-1.23": _HEAD
    + "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    + '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    + _TAIL.replace("%UPSTREAM_CLUSTER%", "%UPSTREAM_CLUSTER_RAW%"),
}

ISTIO_TEXT_FORMAT = ISTIO_TEXT_FORMATS["istio-text-1.23"]

# Envoy's own default format (no Istio): what a bare Envoy writes with no log_format.
ENVOY_DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# What wslog's access-log EnvoyFilter adds to the JSON format so nothing has to be guessed.
WSLOG_EXTRA_FIELDS: dict[str, str] = {
    "upstream_protocol": "%UPSTREAM_PROTOCOL%",
    "access_log_type": "%ACCESS_LOG_TYPE%",
    "upgrade": "%REQ(UPGRADE)%",
    "connection_id": "%CONNECTION_ID%",
}

# The same four fields appended to Istio's TEXT format (space-separated, after %ROUTE_NAME%).
WSLOG_EXTRA_TEXT = '%UPSTREAM_PROTOCOL% %ACCESS_LOG_TYPE% "%REQ(UPGRADE)%" %CONNECTION_ID%'
WSLOG_TEXT_FORMAT = ISTIO_TEXT_FORMAT.removesuffix("\n") + " " + WSLOG_EXTRA_TEXT + "\n"
