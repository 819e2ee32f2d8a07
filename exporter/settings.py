"""Exporter settings: from flags and WSLOG_* environment variables, validated once at start.

Every bad value is reported with the flag it came from and what a good one looks like, all at
once, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from analyzer.correlate import window_problems
from analyzer.errors import WslogError
from analyzer.lines import MAX_LINE_BYTES


class SourceKind(StrEnum):
    KUBERNETES = "kubernetes"
    FILES = "files"
    STDIN = "stdin"
    NATS = "nats"  # a correlator replica: its partitions of the lines forwarders publish


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


# Lines waiting for a tick, at most (a source waits past it); when behind, a tick takes up to
# this much. Larger batches pay the correlator's per-batch work less often: replaying 1M TEXT
# lines took 0.90x the time with 12 MiB as with 8 (0.80x with 32 MiB, but a peak of 600 MiB,
# past the manifests' 512 MiB limit; 12 MiB: 404 MiB at worst, pending at its cap). README
# "Performance".
MAX_BUFFERED_BYTES = 12 << 20


@dataclass(frozen=True)
class PipelineSettings:
    pair_window: timedelta
    clock_skew: timedelta
    max_pending: int
    batch_interval_s: float
    log_format: str | None
    max_line_bytes: int = MAX_LINE_BYTES
    max_buffered_bytes: int = MAX_BUFFERED_BYTES


@dataclass(frozen=True)
class KubeSettings:
    """Where and how the kubernetes source discovers and follows istio-proxy containers."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    label_selector: str = ""
    container: str = "istio-proxy"
    since_seconds: int | None = None  # None: from now (only lines written after start)
    kubeconfig: str | None = None  # None: in-cluster config, else the default kubeconfig
    context: str | None = None
    in_cluster: bool | None = None  # None: in-cluster when running in a pod, else kubeconfig
    max_concurrent_streams: int = 64
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 30.0  # connect timeout, and read timeout of list requests
    stream_idle_timeout_s: float = 900.0  # reopen a log stream silent for this long
    watch_timeout_s: int = 300  # server-side timeoutSeconds of each watch
    deleted_grace_s: float = 10.0  # keep reading a deleted pod's stream this long at most
    chunk_max_lines: int = 1000
    max_line_bytes: int = MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff bounds must satisfy 0 < initial <= max")
        if self.since_seconds is not None and self.since_seconds < 0:
            raise ValueError("since_seconds must not be negative")
        if not self.container:
            raise ValueError("container name must not be empty")


@dataclass(frozen=True)
class FileSettings:
    """Which node-local or saved files the files source follows, and how."""

    globs: tuple[str, ...]
    from_start: bool = False
    poll_interval_s: float = 0.25
    once: bool = False  # replay: read every matched file to its end, then return
    framing: str | None = None  # None: detect (CRI under /var/log/pods, else plain)
    read_size: int = 1 << 20  # bytes read and handed over at a time: bounds the memory used
    chunk_max_lines: int = 1000
    max_line_bytes: int = MAX_LINE_BYTES
    state_dir: str | None = None  # keep read positions here across restarts (exporter.filestate)
    state_interval_s: float = 2.0  # save them at most this often (and at a clean stop)

    def __post_init__(self) -> None:
        if not self.globs:
            raise ValueError("at least one path or glob is required")
        if self.poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        if self.read_size < 1 or self.state_interval_s <= 0:
            raise ValueError("read_size and state_interval_s must be positive")


@dataclass(frozen=True)
class NatsSettings:
    """NATS JetStream between node-local forwarders and sharded correlators
    (``exporter.jetstream``). The server maps ``wslog.lines.<token>`` onto ``partitions``
    partitions (``{{partition(N,1)}}``, see ``exporter/jetstream/subjects.py``); correlator
    ``replica`` of ``replicas`` consumes every partition p with p % replicas == replica."""

    url: str = "nats://127.0.0.1:4222"
    partitions: int = 1
    replica: int = 0
    replicas: int = 1
    stream: str = "WSLOG"
    fetch_batch: int = 1000  # messages per pull
    ack_interval_s: float = 0.25  # acknowledge what has been counted this often
    connect_timeout_s: float = 5.0
    duplicate_window_s: float = 120.0  # JetStream drops a re-published line within it
    max_age_s: float = 86_400.0  # a stream this tool creates keeps lines a day

    def __post_init__(self) -> None:
        if not 0 <= self.replica < self.replicas <= self.partitions:
            raise ValueError("need 0 <= replica < replicas <= partitions")

    @property
    def owned(self) -> tuple[int, ...]:
        return tuple(p for p in range(self.partitions) if p % self.replicas == self.replica)


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
    problems = window_problems(pair_window_s, clock_skew_s)
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
