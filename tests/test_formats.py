"""The format compiler: Envoy format strings and JSON format objects."""

from __future__ import annotations

import re

import pytest

from analyzer.errors import FormatError
from analyzer.formats import (
    FormatKind,
    chrono_format,
    compile_text,
    default_formats,
    parse_log_format,
    strftime_regex,
)
from analyzer.istio_formats import ISTIO_TEXT_FORMATS


def test_default_formats_cover_every_istio_generation_and_envoy() -> None:
    names = [f.name for f in default_formats().formats]
    assert names == [
        "istio-json",
        "istio-text-wslog",
        "istio-text-1.9",
        "istio-text-1.7",
        "istio-text-1.8",
        "istio-text-1.2",
        "istio-text-1.1",
        "istio-text-1.0",
        "istio-text-1.0-tcp",
        "envoy-default",
    ]


def test_istio_1_23_text_differs_from_1_9_only_by_upstream_cluster_raw() -> None:
    old, new = ISTIO_TEXT_FORMATS["istio-text-1.9"], ISTIO_TEXT_FORMATS["istio-text-1.23"]
    assert new == old.replace("%UPSTREAM_CLUSTER%", "%UPSTREAM_CLUSTER_RAW%")
    assert compile_text("a", old).pattern == compile_text("b", new).pattern


def test_header_names_map_to_entry_columns_case_insensitively() -> None:
    fmt = compile_text("c", "%REQ(upgrade)% %REQ(x-request-id)% %ACCESS_LOG_TYPE%")
    assert [f.column for f in fmt.fields] == ["upgrade", "request_id", "access_log_type"]
    with pytest.raises(FormatError, match="upper case"):  # Envoy refuses %req(...)%
        compile_text("c", "%REQ(upgrade)% %req(upgrade)%")
    fmt = compile_text("c", "%REQ(Upgrade)% %REQ(X-Request-Id)% %CONNECTION_ID% %DURATION%")
    assert [f.column for f in fmt.fields] == [
        "upgrade",
        "request_id",
        "connection_id",
        "duration_ms",
    ]


def test_unknown_operators_are_kept_as_anonymous_fields() -> None:
    fmt = compile_text("c", "%START_TIME% %GRPC_STATUS% %RESPONSE_CODE%")
    assert [f.column for f in fmt.fields] == ["start_time", None, "response_code"]
    assert re.match(fmt.pattern, "2026-01-01T00:00:00.000Z OK 200")


def test_header_alternatives_and_length_limits_use_the_first_header() -> None:
    fmt = compile_text("c", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64% %REQ(:AUTHORITY)%")
    assert [f.column for f in fmt.fields] == ["path", "authority"]


def test_json_format_object_keys_are_user_chosen() -> None:
    fmt = parse_log_format(
        '{"ts": "%START_TIME%", "proto_up": "%UPSTREAM_PROTOCOL%", "kind": "%ACCESS_LOG_TYPE%",'
        ' "up": "%REQ(UPGRADE)%", "conn": "%CONNECTION_ID%", "const": 1, "mixed": "a %PROTOCOL%"}'
    )
    assert fmt.kind is FormatKind.JSON
    assert {f.key: f.column for f in fmt.fields} == {
        "ts": "start_time",
        "proto_up": "upstream_protocol",
        "kind": "access_log_type",
        "up": "upgrade",
        "conn": "connection_id",
    }


@pytest.mark.parametrize("spec", ["no operators here", '{"a": 1}', "{not json"])
def test_unusable_formats_raise_a_format_error_that_says_what_to_do(spec: str) -> None:
    with pytest.raises(FormatError, match=r"give|quote"):
        parse_log_format(spec)


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("%Y-%m-%dT%H:%M:%E3SZ", "2026-01-02T03:04:05.678Z"),
        ("%s.%3f", "1767323045.678"),
        ("%d/%b/%Y:%H:%M:%S %z", "02/Jan/2026:03:04:05 +0000"),
        ("%Y-%m-%d %H:%M:%S.%6f", "2026-01-02 03:04:05.678000"),
    ],
)
def test_custom_start_time_formats_compile_to_a_matching_regex(fmt: str, value: str) -> None:
    assert re.fullmatch(strftime_regex(fmt), value)


def test_envoy_fraction_directives_become_chrono_ones() -> None:
    assert chrono_format("%H:%M:%E3S") == "%H:%M:%S%.3f"
    assert chrono_format("%s.%f") == "%s.%9f"


def test_trailing_newline_of_a_format_is_not_part_of_the_pattern() -> None:
    with_nl = compile_text("a", "%RESPONSE_CODE% %DURATION%\n")
    escaped = compile_text("a", "%RESPONSE_CODE% %DURATION%\\n")
    assert (
        with_nl.pattern
        == escaped.pattern
        == compile_text("a", "%RESPONSE_CODE% %DURATION%").pattern
    )
