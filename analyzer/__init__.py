"""wslog's analysis core: decode istio-proxy access-log lines, correlate both sidecars' entries
of each WebSocket, classify its upgrade path and outcome.

Everything below ``analyzer`` except ``analyzer.inputs`` and ``analyzer.report`` is pure: values in,
values out, no I/O, no clocks.
"""
