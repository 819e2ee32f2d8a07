"""Exporter settings: from flags and WSLOG_* environment variables, validated once at start.

Every bad value is reported with the flag it came from and what a good one looks like, all at
once, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from analyzer.errors import WslogError
from analyzer.lines import MAX_LINE_BYTES


class SourceKind(StrEnum):
    KUBERNETES = "kubernetes"
    FILES = "files"
    STDIN = "stdin"


class SettingsError(WslogError, ValueError):
    """One or more settings are invalid; the message lists each with its fix."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Listen:
        match = re.fullmatch(r"\[?([^\]]*)\]?:(\d{1,5})", value.strip())
        if match is None or not 0 <= int(match.group(2)) <= 65535:
            raise SettingsError(
                f"--listen {value!r}: give HOST:PORT, e.g. 0.0.0.0:9090 or 127.0.0.1:0"
            )
        return cls(match.group(1) or "0.0.0.0", int(match.group(2)))


@dataclass(frozen=True)
class PipelineSettings:
    pair_window: timedelta
    clock_skew: timedelta
    max_pending: int
    batch_interval_s: float
    log_format: str | None
    max_line_bytes: int = MAX_LINE_BYTES
    max_buffered_bytes: int = 8 << 20


# The command's defaults where they differ from an embedded server's (tests, benchmarks), which
# renders every scrape and stops at once, as the exporter did before these settings existed.
DRAIN_S = 5.0  # `wslog exporter --drain-seconds`: long enough for a scrape already on its way
RENDER_INTERVAL_S = 1.0  # `--min-render-interval`: Prometheus HA pairs and bursts share a render


@dataclass(frozen=True)
class HttpSettings:
    """Limits of the HTTP server (see exporter/server.py): a port any pod may connect to costs
    at most ``max_connections`` sockets and ``workers`` threads, and each connection at most
    ``timeout_s`` to send a request head or to take a response."""

    workers: int = 4
    queue: int = 64  # complete requests waiting for a worker; past it, 503 at once
    backlog: int = 128
    max_connections: int = 256  # past it, the oldest connection waiting for a request is closed
    timeout_s: float = 5.0
    max_requests_per_connection: int = 100
    min_render_interval_s: float = 0.0  # the command's default: RENDER_INTERVAL_S
    drain_s: float = 0.0  # the command's default: DRAIN_S


@dataclass(frozen=True)
class ExporterSettings:
    source: SourceKind
    listen: Listen
    max_series: int
    pipeline: PipelineSettings
    http: HttpSettings = field(default_factory=HttpSettings)


def check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def validate_pipeline(
    pair_window_s: float, clock_skew_s: float, max_pending: int, batch_interval_s: float
) -> list[str]:
    problems: list[str] = []
    check(problems, 0 < pair_window_s <= 3600, "--pair-window must be in (0, 3600] seconds")
    check(problems, 0 <= clock_skew_s <= 300, "--clock-skew must be in [0, 300] seconds")
    check(problems, max_pending >= 100, "--max-pending must be at least 100 entries")
    check(problems, 0 < batch_interval_s <= 60, "--batch-interval must be in (0, 60] seconds")
    return problems


def validate_http(drain_s: float, min_render_interval_s: float) -> list[str]:
    problems: list[str] = []
    check(problems, 0 <= drain_s <= 600, "--drain-seconds must be in [0, 600] seconds (0: none)")
    check(
        problems,
        0 <= min_render_interval_s <= 60,
        "--min-render-interval must be in [0, 60] seconds (0: render every scrape)",
    )
    return problems


def raise_if(problems: list[str]) -> None:
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
