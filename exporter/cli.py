"""``wslog exporter`` and ``wslog tail``: the live pipeline as a service and at a terminal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from analyzer.correlate import PAIR_WINDOW_S
from analyzer.errors import WslogError
from analyzer.lines import MAX_LINE_BYTES
from analyzer.options import log_formats
from exporter.logs import configure_logging
from exporter.settings import (
    DRAIN_S,
    RENDER_INTERVAL_S,
    ExporterSettings,
    HttpSettings,
    Listen,
    PipelineSettings,
    SettingsError,
    SourceKind,
    raise_if,
    validate_http,
    validate_pipeline,
)
from exporter.sources import FileSettings, KubeSettings, Source, SourceError, StdinSource

SOURCE_HELP = "Where lines come from: kubernetes (pod logs via the API), files, or stdin."
PATH_HELP = (
    "Files or globs to follow with --source files (e.g. '/var/log/pods/*/istio-proxy/*.log')."
)

SourceOpt = Annotated[SourceKind, typer.Option(help=SOURCE_HELP, envvar="WSLOG_SOURCE")]
PathOpt = Annotated[list[str] | None, typer.Option("--path", help=PATH_HELP, envvar="WSLOG_PATH")]
FromStartOpt = Annotated[
    bool,
    typer.Option(
        help="files: read matched files from the beginning, not only new lines.",
        envvar="WSLOG_FROM_START",
    ),
]
OnceOpt = Annotated[
    bool,
    typer.Option(
        help="files: read to the end of every file, then stop following.", envvar="WSLOG_ONCE"
    ),
]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        help="files: keep each file's read position in this directory, so that a restart "
        "resumes where the last run stopped (no line lost or counted twice).",
        envvar="WSLOG_STATE_DIR",
    ),
]
NamespaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--namespace",
        "-n",
        help="kubernetes: namespaces to watch (default: all).",
        envvar="WSLOG_NAMESPACES",
    ),
]
SelectorOpt = Annotated[
    str,
    typer.Option(
        "--selector", "-l", help="kubernetes: pod label selector.", envvar="WSLOG_SELECTOR"
    ),
]
SinceOpt = Annotated[
    int | None,
    typer.Option(
        help="kubernetes: start this many seconds back instead of now.", envvar="WSLOG_SINCE"
    ),
]
KubeconfigOpt = Annotated[
    str | None,
    typer.Option(
        help="kubernetes: kubeconfig file (default: in-cluster, then ~/.kube/config).",
        envvar="KUBECONFIG",
    ),
]
ContextOpt = Annotated[
    str | None, typer.Option(help="kubernetes: kubeconfig context.", envvar="WSLOG_CONTEXT")
]
StreamsOpt = Annotated[
    int,
    typer.Option(
        help="kubernetes: at most this many log streams open at once.", envvar="WSLOG_MAX_STREAMS"
    ),
]
WindowOpt = Annotated[
    float,
    typer.Option(
        help="Seconds an entry waits for the other sidecar's entry.", envvar="WSLOG_PAIR_WINDOW"
    ),
]
SkewOpt = Annotated[
    float,
    typer.Option(
        help="Tolerated clock difference between pods, seconds.", envvar="WSLOG_CLOCK_SKEW"
    ),
]
PendingOpt = Annotated[
    int,
    typer.Option(
        help="At most this many entries wait for a counterpart; the oldest "
        "are released early (and counted) past it.",
        envvar="WSLOG_MAX_PENDING",
    ),
]
LineBytesOpt = Annotated[
    int,
    typer.Option(
        help="Longest line read, in bytes; a longer one is counted malformed (too-long), "
        "nothing else is lost.",
        envvar="WSLOG_MAX_LINE_BYTES",
    ),
]
BatchOpt = Annotated[
    float, typer.Option(help="Seconds between micro-batches.", envvar="WSLOG_BATCH_INTERVAL")
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="The mesh's access-log format if not Istio's default: an "
        "Envoy format string, a JSON format object, or @file.",
        envvar="WSLOG_LOG_FORMAT",
    ),
]


NO_CREDENTIALS_FIX = (
    "Pass --kubeconfig FILE or --context NAME, run in a pod with a service account, "
    "or read logs another way: --source files --path GLOB, or --source stdin"
)


def _source(
    kind: SourceKind,
    paths: list[str],
    from_start: bool,
    once: bool,
    kube: KubeSettings,
    *,
    max_line_bytes: int,
    state_dir: str | None,
) -> Source:
    if state_dir is not None and kind is not SourceKind.FILES:
        raise SettingsError("--state-dir applies only to --source files")
    if kind is SourceKind.FILES:
        from exporter.files import FileSource
        from exporter.filestate import check_state_dir

        if not paths:
            raise SettingsError("--source files needs at least one --path GLOB")
        if state_dir is not None:
            check_state_dir(state_dir)
        files = FileSettings(
            globs=tuple(paths),
            from_start=from_start,
            once=once,
            max_line_bytes=max_line_bytes,
            state_dir=state_dir,
        )
        return FileSource(files)
    if kind is SourceKind.STDIN:
        return StdinSource(max_line_bytes=max_line_bytes)
    from exporter.kube import KubeSource, connect

    try:
        api = connect(kube)  # loads credentials only: no request yet
    except SourceError as error:
        raise SettingsError(f"{str(error).rstrip('.')}. {NO_CREDENTIALS_FIX}") from error
    return KubeSource(kube, api)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _pipeline_settings(
    pair_window: float,
    clock_skew: float,
    max_pending: int,
    batch: float,
    fmt: str | None,
    *,
    max_line_bytes: int,
) -> PipelineSettings:
    problems = validate_pipeline(pair_window, clock_skew, max_pending, batch)
    if max_line_bytes < 1024:
        problems.append("--max-line-bytes must be at least 1024")
    raise_if(problems)
    return PipelineSettings(
        pair_window=timedelta(seconds=pair_window),
        clock_skew=timedelta(seconds=clock_skew),
        max_pending=max_pending,
        batch_interval_s=batch,
        log_format=fmt,
        max_line_bytes=max_line_bytes,
    )


def exporter(
    source: SourceOpt = SourceKind.KUBERNETES,
    path: PathOpt = None,
    from_start: FromStartOpt = False,
    once: OnceOpt = False,
    state_dir: StateDirOpt = None,
    namespace: NamespaceOpt = None,
    selector: SelectorOpt = "",
    since: SinceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    max_streams: StreamsOpt = 64,
    listen: Annotated[
        str,
        typer.Option(
            help="HOST:PORT for /metrics, /healthz, /readyz. The default listens on every "
            "interface, as a pod must for Prometheus; on a laptop use 127.0.0.1:9090.",
            envvar="WSLOG_LISTEN",
        ),
    ] = "0.0.0.0:9090",
    max_series: Annotated[
        int,
        typer.Option(
            help="Label sets per metric before folding into __overflow__.",
            envvar="WSLOG_MAX_SERIES",
        ),
    ] = 2000,
    pair_window: WindowOpt = PAIR_WINDOW_S,
    clock_skew: SkewOpt = 1.0,
    max_pending: PendingOpt = 50_000,
    batch_interval: BatchOpt = 1.0,
    log_format: FormatOpt = None,
    max_line_bytes: LineBytesOpt = MAX_LINE_BYTES,
    drain_seconds: Annotated[
        float,
        typer.Option(
            help="After SIGTERM, keep serving the final counts this many seconds (/readyz says "
            "draining); 0 stops at once.",
            envvar="WSLOG_DRAIN_SECONDS",
        ),
    ] = DRAIN_S,
    min_render_interval: Annotated[
        float,
        typer.Option(
            help="Render /metrics at most once per this many seconds; scrapes in between "
            "share the last rendering.",
            envvar="WSLOG_MIN_RENDER_INTERVAL",
        ),
    ] = RENDER_INTERVAL_S,
) -> None:
    """Follow istio-proxy logs, correlate both sidecars of every WebSocket live, and serve
    Prometheus metrics (see the README's metrics table). Stops cleanly on SIGTERM, after
    serving the final counts for --drain-seconds."""
    configure_logging()
    with _settings_errors("exporter"):
        listen_at = Listen.parse(listen)
        series = _positive("--max-series", max_series)
        pipeline = _pipeline_settings(
            pair_window,
            clock_skew,
            max_pending,
            batch_interval,
            log_format,
            max_line_bytes=max_line_bytes,
        )
        kube = _kube_settings(
            namespace, selector, since, kubeconfig, context, max_streams, max_line_bytes
        )
        raise_if(validate_http(drain_seconds, min_render_interval))
        http = HttpSettings(min_render_interval_s=min_render_interval, drain_s=drain_seconds)
        formats = log_formats(log_format)  # every setting checked before any credential
        src = _source(
            source,
            path or [],
            from_start,
            once,
            kube,
            max_line_bytes=max_line_bytes,
            state_dir=state_dir,
        )
    from exporter.run import run_exporter
    from exporter.server import ListenError

    settings = ExporterSettings(source, listen_at, series, pipeline, http)
    try:
        run_exporter(settings, src, formats, _stop_on_signals())
    except ListenError as error:
        typer.echo(f"wslog exporter: {error}", err=True)
        raise typer.Exit(2) from error


def tail(
    source: SourceOpt = SourceKind.KUBERNETES,
    path: PathOpt = None,
    from_start: FromStartOpt = False,
    once: OnceOpt = False,
    state_dir: StateDirOpt = None,
    namespace: NamespaceOpt = None,
    selector: SelectorOpt = "",
    since: SinceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    max_streams: StreamsOpt = 64,
    filter_namespace: Annotated[
        list[str] | None, typer.Option(help="Show only this destination namespace.")
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option(help="Show only this destination service (short or FQDN).")
    ] = None,
    outcome: Annotated[
        list[str] | None,
        typer.Option(help="Show only this outcome: upgraded, rejected, failed, open."),
    ] = None,
    pair_window: WindowOpt = PAIR_WINDOW_S,
    clock_skew: SkewOpt = 1.0,
    max_pending: PendingOpt = 50_000,
    batch_interval: BatchOpt = 0.5,
    log_format: FormatOpt = None,
    max_line_bytes: LineBytesOpt = MAX_LINE_BYTES,
) -> None:
    """Print each WebSocket connection as soon as it is classified; a summary on Ctrl-C."""
    from analyzer.report import print_failures, report_console, summary, summary_table
    from analyzer.vocab import Outcome
    from exporter.tail import TailFilter, run_tail

    with _settings_errors("tail"):
        unknown = set(outcome or []) - {o.value for o in Outcome}
        if unknown:
            choices = ", ".join(o.value for o in Outcome)
            raise SettingsError(
                f"--outcome {', '.join(sorted(unknown))}: not an outcome; choose from {choices}"
            )
        pipeline = _pipeline_settings(
            pair_window,
            clock_skew,
            max_pending,
            batch_interval,
            log_format,
            max_line_bytes=max_line_bytes,
        )
        kube = _kube_settings(
            namespace, selector, since, kubeconfig, context, max_streams, max_line_bytes
        )
        formats = log_formats(log_format)  # every setting checked before any credential
        src = _source(
            source,
            path or [],
            from_start,
            once,
            kube,
            max_line_bytes=max_line_bytes,
            state_dir=state_dir,
        )
    only = TailFilter(tuple(filter_namespace or []), tuple(service or []), tuple(outcome or []))
    console = report_console()
    shown = run_tail(src, formats, pipeline, only, console, _stop_on_signals())
    if shown.height:
        console.print(summary_table(summary(shown)))
        print_failures(console, shown)


@contextmanager
def _settings_errors(command: str) -> Iterator[None]:
    try:
        yield
    except (SettingsError, WslogError, ValueError) as exc:
        typer.echo(f"wslog {command}: {exc}", err=True)
        raise typer.Exit(2) from exc


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise SettingsError(f"{flag} must be at least 1")
    return value


def _kube_settings(
    namespace: list[str] | None,
    selector: str,
    since: int | None,
    kubeconfig: str | None,
    context: str | None,
    max_streams: int,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> KubeSettings:
    namespaces = tuple(n for item in namespace or [] for n in item.split(",") if n)
    if kubeconfig and not Path(kubeconfig.split(":")[0]).expanduser().exists():
        raise SettingsError(f"--kubeconfig {kubeconfig}: no such file")
    return KubeSettings(
        namespaces=namespaces,
        label_selector=selector,
        since_seconds=since,
        kubeconfig=kubeconfig,
        context=context,
        max_concurrent_streams=max_streams,
        max_line_bytes=max_line_bytes,
    )
