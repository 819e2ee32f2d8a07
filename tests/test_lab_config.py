"""The sidecar bootstraps mirror Istio's configuration (pure functions, no Envoy needed)."""

from __future__ import annotations

from typing import Any

import pytest

from analyzer.istio_formats import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT, WSLOG_EXTRA_FIELDS
from analyzer.vocab import Hop
from lab import envoy_config as ec
from lab.scenarios import (
    BY_NAME,
    SCENARIOS,
    LogFormat,
    Scenario,
    UnknownScenarioError,
    select,
)

PORTS = ec.Ports(
    app=1001, server_inbound=1002, server_admin=1003, client_outbound=1004, client_admin=1005
)


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def test_allow_connect_is_set_on_the_server_hcm_only_where_the_envoyfilter_applies() -> None:
    assert ec.server_hcm_http2_options(BY_NAME["h2"]) == {"allow_connect": True}
    assert ec.server_hcm_http2_options(BY_NAME["h2-no-allow-connect"]) is None
    assert ec.server_hcm_http2_options(BY_NAME["h1"]) is None
    server = ec.server_bootstrap(BY_NAME["h2"], PORTS, "/dev/null", LogFormat.JSON)
    assert _hcm(server)["http2_protocol_options"] == {"allow_connect": True}
    assert _hcm(server)["codec_type"] == "AUTO"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_client_cluster_speaks_http2_exactly_when_h2_upgrade_policy_is_upgrade(
    scenario: Scenario,
) -> None:
    options = ec.client_cluster_protocol_options(scenario)
    explicit = options[ec._HTTP_OPTIONS]["explicit_http_config"]
    assert ("http2_protocol_options" in explicit) == (scenario.hop is Hop.H2)
    client = ec.client_bootstrap(scenario, PORTS, "/dev/null", LogFormat.JSON)
    cluster = client["static_resources"]["clusters"][0]
    assert cluster["name"] == "outbound|8080||websockets-server.default.svc.cluster.local"
    assert cluster["typed_extension_protocol_options"] == options


def test_the_client_route_has_istios_default_retry_policy_and_no_timeout() -> None:
    client = ec.client_bootstrap(BY_NAME["h1"], PORTS, "/dev/null", LogFormat.JSON)
    (vhost,) = _hcm(client)["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    assert "websockets-server.default.svc.cluster.local:8080" in vhost["domains"]
    assert "websockets-server" in vhost["domains"]
    assert route["name"] == "default"
    assert route["route"]["timeout"] == "0s"
    retry = route["route"]["retry_policy"]
    assert retry["retry_on"] == (
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert (retry["num_retries"], retry["retriable_status_codes"]) == (2, [503])
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"


def test_both_sidecars_upgrade_websockets_and_point_where_istio_points() -> None:
    scenario = BY_NAME["h1"]
    client = ec.client_bootstrap(scenario, PORTS, "/dev/null", LogFormat.JSON)
    server = ec.server_bootstrap(scenario, PORTS, "/dev/null", LogFormat.JSON)
    for bootstrap in (client, server):
        assert _hcm(bootstrap)["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    server_cluster = server["static_resources"]["clusters"][0]
    assert server_cluster["name"] == "inbound|80||"
    endpoint = server_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 1001}
    client_cluster = client["static_resources"]["clusters"][0]
    endpoint = client_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == PORTS.server_inbound


def test_access_logs_use_istios_formats_and_wslog_fields_only_when_typed() -> None:
    plain, typed = BY_NAME["long-lived"], BY_NAME["long-lived-typed"]
    assert ec.log_format(plain, LogFormat.JSON) == {"json_format": ISTIO_JSON_FORMAT}
    assert ec.log_format(typed, LogFormat.JSON)["json_format"] == {
        **ISTIO_JSON_FORMAT,
        **WSLOG_EXTRA_FIELDS,
    }
    text = ec.log_format(plain, LogFormat.TEXT)["text_format_source"]["inline_string"]
    assert text == ISTIO_TEXT_FORMAT
    typed_text = ec.log_format(typed, LogFormat.TEXT)["text_format_source"]["inline_string"]
    assert "%ACCESS_LOG_TYPE%" in typed_text and typed_text.endswith("\n")


def test_periodic_logging_is_configured_only_for_long_lived_scenarios() -> None:
    for scenario in SCENARIOS:
        hcm = _hcm(ec.server_bootstrap(scenario, PORTS, "/dev/null", LogFormat.JSON))
        assert ("access_log_options" in hcm) == scenario.name.startswith("long-lived")


def test_select_keeps_order_and_rejects_unknown_names() -> None:
    assert [s.name for s in select(["h2", "h1", "h2"])] == ["h2", "h1"]
    assert select([]) == SCENARIOS
    with pytest.raises(UnknownScenarioError, match="wslog lab list"):
        select(["h3"])
