"""``wslog exporter`` and ``wslog tail``: the live pipeline as a service and at a terminal.

Both read lines from the same sources and join them with the same pipeline, so the flags for
those are declared once, in ``LiveFlags``, and both commands take them through ``live_command``.
Every flag is checked before anything starts, and every bad one is reported at once with its
fix (exit 2); credentials are loaded only after that.
"""

from __future__ import annotations

import functools
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from analyzer.correlate import PAIR_WINDOW_S
from analyzer.errors import WslogError
from analyzer.formats import FormatSet
from analyzer.lines import MAX_LINE_BYTES
from analyzer.options import log_formats
from exporter.logs import configure_logging
from exporter.settings import (
    DRAIN_S,
    RENDER_INTERVAL_S,
    ExporterSettings,
    FileSettings,
    HttpSettings,
    KubeSettings,
    Listen,
    NatsSettings,
    PipelineSettings,
    SettingsError,
    SourceKind,
    check,
    raise_if,
    validate_http,
    validate_pipeline,
)
from exporter.sources import Source, SourceError, StdinSource

T = TypeVar("T")

NO_CREDENTIALS_FIX = (
    "Pass --kubeconfig FILE or --context NAME, run in a pod with a service account, "
    "or read logs another way: --source files --path GLOB, or --source stdin"
)


@dataclass(frozen=True)
class LiveFlags:
    """The flags ``wslog exporter`` and ``wslog tail`` share, as given: where lines come from,
    and how the pipeline joins them. Each is an option of both commands, with its help and its
    ``WSLOG_*`` variable."""

    source: Annotated[
        SourceKind,
        typer.Option(
            help="Where lines come from: kubernetes (pod logs via the API), files, or stdin.",
            envvar="WSLOG_SOURCE",
        ),
    ] = SourceKind.KUBERNETES
    path: Annotated[
        list[str] | None,
        typer.Option(
            "--path",
            help="Files or globs to follow with --source files "
            "(e.g. '/var/log/pods/*/istio-proxy/*.log').",
            envvar="WSLOG_PATH",
        ),
    ] = None
    from_start: Annotated[
        bool,
        typer.Option(
            help="files: read matched files from the beginning, not only new lines.",
            envvar="WSLOG_FROM_START",
        ),
    ] = False
    once: Annotated[
        bool,
        typer.Option(
            help="files: read to the end of every file, then stop following.",
            envvar="WSLOG_ONCE",
        ),
    ] = False
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="files: keep each file's read position in this directory, so that a restart "
            "resumes where the last run stopped (no line lost or counted twice).",
            envvar="WSLOG_STATE_DIR",
        ),
    ] = None
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="kubernetes: namespaces to watch (default: all).",
            envvar="WSLOG_NAMESPACES",
        ),
    ] = None
    selector: Annotated[
        str,
        typer.Option(
            "--selector", "-l", help="kubernetes: pod label selector.", envvar="WSLOG_SELECTOR"
        ),
    ] = ""
    since: Annotated[
        int | None,
        typer.Option(
            help="kubernetes: start this many seconds back instead of now.", envvar="WSLOG_SINCE"
        ),
    ] = None
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            help="kubernetes: kubeconfig file (default: in-cluster, then ~/.kube/config).",
            envvar="KUBECONFIG",
        ),
    ] = None
    context: Annotated[
        str | None,
        typer.Option(help="kubernetes: kubeconfig context.", envvar="WSLOG_CONTEXT"),
    ] = None
    max_streams: Annotated[
        int,
        typer.Option(
            help="kubernetes: at most this many log streams open at once.",
            envvar="WSLOG_MAX_STREAMS",
        ),
    ] = 64
    nats_url: Annotated[
        str,
        typer.Option(
            help="nats: the NATS server (JetStream on) the forwarders publish to.",
            envvar="WSLOG_NATS_URL",
        ),
    ] = "nats://127.0.0.1:4222"
    partitions: Annotated[
        int,
        typer.Option(
            help="nats: N of the server's mapping wslog.lines.* -> "
            "wslog.part.{{partition(N,1)}}.{{wildcard(1)}}; the same on every replica.",
            envvar="WSLOG_PARTITIONS",
        ),
    ] = 1
    replicas: Annotated[
        int,
        typer.Option(
            help="nats: how many correlator replicas share the partitions (at most N).",
            envvar="WSLOG_REPLICAS",
        ),
    ] = 1
    replica: Annotated[
        str,
        typer.Option(
            help="nats: this replica's index, 0 to replicas-1, or a StatefulSet pod name "
            "ending in it (wslog-correlator-2); it consumes partitions p with "
            "p % replicas == index.",
            envvar="WSLOG_REPLICA",
        ),
    ] = "0"
    pair_window: Annotated[
        float,
        typer.Option(
            help="Seconds an entry waits for the other sidecar's entry.",
            envvar="WSLOG_PAIR_WINDOW",
        ),
    ] = PAIR_WINDOW_S
    clock_skew: Annotated[
        float,
        typer.Option(
            help="Tolerated clock difference between pods, seconds.", envvar="WSLOG_CLOCK_SKEW"
        ),
    ] = 1.0
    max_pending: Annotated[
        int,
        typer.Option(
            help="At most this many entries wait for a counterpart; the oldest "
            "are released early (and counted) past it.",
            envvar="WSLOG_MAX_PENDING",
        ),
    ] = 50_000
    batch_interval: Annotated[
        float,
        typer.Option(help="Seconds between micro-batches.", envvar="WSLOG_BATCH_INTERVAL"),
    ] = 1.0
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="The mesh's access-log format if not Istio's default: an "
            "Envoy format string, a JSON format object, or @file.",
            envvar="WSLOG_LOG_FORMAT",
        ),
    ] = None
    max_line_bytes: Annotated[
        int,
        typer.Option(
            help="Longest line read, in bytes; a longer one is counted malformed (too-long), "
            "nothing else is lost.",
            envvar="WSLOG_MAX_LINE_BYTES",
        ),
    ] = MAX_LINE_BYTES

    def problems(self) -> list[str]:
        """Every flag that is wrong, each with what a good value looks like."""
        problems = validate_pipeline(
            self.pair_window, self.clock_skew, self.max_pending, self.batch_interval
        )
        check(problems, self.max_line_bytes >= 1024, "--max-line-bytes must be at least 1024")
        check(problems, self.max_streams >= 1, "--max-streams must be at least 1")
        check(problems, self.since is None or self.since >= 0, "--since must not be negative")
        files = self.source is SourceKind.FILES
        check(problems, bool(self.path) or not files, "--source files needs at least one --path")
        check(
            problems,
            self.state_dir is None or files,
            "--state-dir applies only to --source files",
        )
        nats = self.source is SourceKind.NATS
        index = replica_index(self.replica)
        check(problems, index is not None, f"--replica {self.replica!r}: give N or NAME-N")
        check(
            problems,
            not nats or self.partitions >= self.replicas >= 1,
            "--partitions must be at least --replicas, and --replicas at least 1",
        )
        check(
            problems,
            not nats or index is None or index < self.replicas,
            f"--replica {self.replica}: must be below --replicas {self.replicas}",
        )
        check(problems, self.nats_url.startswith(("nats://", "tls://")), NATS_URL_FIX)
        kubeconfig = self.kubeconfig
        check(
            problems,
            not kubeconfig or Path(kubeconfig.split(":")[0]).expanduser().exists(),
            f"--kubeconfig {kubeconfig}: no such file",
        )
        return problems

    def pipeline(self) -> PipelineSettings:
        return PipelineSettings(
            pair_window=timedelta(seconds=self.pair_window),
            clock_skew=timedelta(seconds=self.clock_skew),
            max_pending=self.max_pending,
            batch_interval_s=self.batch_interval,
            log_format=self.log_format,
            max_line_bytes=self.max_line_bytes,
        )

    def nats(self, url: str | None = None) -> NatsSettings:
        """The NATS settings of a correlator replica (or of a forwarder publishing to ``url``)."""
        if self.source is not SourceKind.NATS:
            return NatsSettings(url=url or self.nats_url)
        index = replica_index(self.replica) or 0
        return NatsSettings(
            url=url or self.nats_url,
            partitions=self.partitions,
            replica=index,
            replicas=self.replicas,
        )

    def open_source(self) -> Source:
        """The source the flags name; the kubernetes one with its credentials loaded (no
        request sent yet), the files one with its state directory proven writable."""
        if self.source is SourceKind.FILES:
            from exporter.files import FileSource
            from exporter.filestate import check_state_dir

            if self.state_dir is not None:
                check_state_dir(self.state_dir)
            files = FileSettings(
                globs=tuple(self.path or ()),
                from_start=self.from_start,
                once=self.once,
                max_line_bytes=self.max_line_bytes,
                state_dir=self.state_dir,
            )
            return FileSource(files)
        if self.source is SourceKind.STDIN:
            return StdinSource(max_line_bytes=self.max_line_bytes)
        if self.source is SourceKind.NATS:
            from exporter.jetstream import JetStreamSource

            return JetStreamSource(self.nats())
        from exporter.kube import KubeSource, connect

        kube = KubeSettings(
            namespaces=tuple(n for item in self.namespace or () for n in item.split(",") if n),
            label_selector=self.selector,
            since_seconds=self.since,
            kubeconfig=self.kubeconfig,
            context=self.context,
            max_concurrent_streams=self.max_streams,
            max_line_bytes=self.max_line_bytes,
        )
        try:
            api = connect(kube)
        except SourceError as error:
            raise SettingsError(f"{str(error).rstrip('.')}. {NO_CREDENTIALS_FIX}") from error
        return KubeSource(kube, api)


NATS_URL_FIX = "--nats-url/--forward must be nats://HOST:PORT (or tls://HOST:PORT)"


def replica_index(value: str) -> int | None:
    """``2`` from ``2`` or from a StatefulSet pod name ``wslog-correlator-2``; None otherwise."""
    tail = value.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class Live:
    """What a live command runs on, built from valid flags."""

    pipeline: PipelineSettings
    formats: FormatSet
    source: Source


def prepare(flags: LiveFlags, problems: list[str]) -> Live:
    """The live pipeline's settings, its formats and its source, once ``flags`` and the
    command's own ``problems`` are all right (else one ``SettingsError`` listing them all)."""
    raise_if(flags.problems() + problems)
    formats = log_formats(flags.log_format)  # every setting checked before any credential
    return Live(flags.pipeline(), formats, flags.open_source())


LiveCommand = Callable[..., None]


def live_command(**defaults: Any) -> Callable[[LiveCommand], LiveCommand]:
    """Make ``func(flags: LiveFlags, **own)`` a command whose options are every ``LiveFlags``
    field (with ``defaults`` overriding a field's default for this command) followed by its
    own. typer reads the options from the signature; the wrapper gathers the shared ones back
    into one ``LiveFlags``."""
    hints = get_type_hints(LiveFlags, include_extras=True)
    shared = [f.name for f in fields(LiveFlags)]

    def wrap(func: LiveCommand) -> LiveCommand:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(name, getattr(LiveFlags, name)),
                annotation=hints[name],
            )
            for name in shared
        ]

        @functools.wraps(func)
        def command(**values: Any) -> None:
            flags = LiveFlags(**{name: values.pop(name) for name in shared})
            func(flags, **values)

        params = [*options, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return command

    return wrap


@live_command()
def exporter(
    flags: LiveFlags,
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
    forward: Annotated[
        str | None,
        typer.Option(
            help="Forwarder mode (one per node): publish every line of the source to this "
            "NATS server, keyed for the correlators (--source nats), instead of correlating; "
            "--listen then serves the forwarder's own /metrics, /healthz and /readyz.",
            envvar="WSLOG_FORWARD",
        ),
    ] = None,
) -> None:
    """Follow istio-proxy logs, correlate both sidecars of every WebSocket live, and serve
    Prometheus metrics (see the README's metrics table). Stops cleanly on SIGTERM, after
    serving the final counts for --drain-seconds."""
    configure_logging()
    with _settings_errors("exporter"):
        problems = validate_http(drain_seconds, min_render_interval)
        check(problems, max_series >= 1, "--max-series must be at least 1")
        listen_at = _parsed(Listen.parse, listen, problems)
        check(
            problems,
            forward is None or forward.startswith(("nats://", "tls://")),
            NATS_URL_FIX,
        )
        check(
            problems,
            forward is None or flags.source is not SourceKind.NATS,
            "--forward publishes a node's lines: use it with --source files, kubernetes or stdin",
        )
        live = prepare(flags, problems)
    from exporter.run import run_exporter
    from exporter.server import ListenError

    http = HttpSettings(min_render_interval_s=min_render_interval, drain_s=drain_seconds)
    assert listen_at is not None  # prepare raised otherwise
    if forward is not None:
        _forward(flags, live, forward, listen_at, http)
        return
    settings = ExporterSettings(flags.source, listen_at, max_series, live.pipeline, http)
    try:
        run_exporter(settings, live.source, live.formats, _stop_on_signals())
    except ListenError as error:
        typer.echo(f"wslog exporter: {error}", err=True)
        raise typer.Exit(2) from error


@live_command(batch_interval=0.5)
def tail(
    flags: LiveFlags,
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
) -> None:
    """Print each WebSocket connection as soon as it is classified; a summary on Ctrl-C."""
    from analyzer.report import print_failures, report_console, summary, summary_table
    from analyzer.vocab import Outcome
    from exporter.tail import TailFilter, run_tail

    with _settings_errors("tail"):
        unknown = sorted(set(outcome or []) - {o.value for o in Outcome})
        choices = ", ".join(o.value for o in Outcome)
        problems: list[str] = []
        check(
            problems,
            not unknown,
            f"--outcome {', '.join(unknown)}: not an outcome; choose from {choices}",
        )
        check(
            problems,
            flags.source is not SourceKind.NATS,
            "--source nats is a correlator replica's input: tail would take its partitions "
            "over from the running replicas. Follow the logs directly (--source kubernetes, "
            "--source files), or read a replica's counts from its /metrics",
        )
        live = prepare(flags, problems)
    only = TailFilter(tuple(filter_namespace or []), tuple(service or []), tuple(outcome or []))
    console = report_console()
    shown = run_tail(live.source, live.formats, live.pipeline, only, console, _stop_on_signals())
    if shown.height:
        console.print(summary_table(summary(shown)))
        print_failures(console, shown)


def _forward(flags: LiveFlags, live: Live, url: str, listen: Listen, http: HttpSettings) -> None:
    """The forwarder: the source's lines onto NATS until it ends or SIGTERM, its own health
    and metrics on ``listen``."""
    from exporter.run import run_forwarder
    from exporter.server import ListenError

    try:
        stats = run_forwarder(
            listen,
            http,
            flags.nats(url),
            live.source,
            live.formats,
            _stop_on_signals(),
            max_line_bytes=flags.max_line_bytes,
        )
    except ListenError as error:
        typer.echo(f"wslog exporter: {error}", err=True)
        raise typer.Exit(2) from error
    except SourceError as error:
        typer.echo(f"wslog exporter: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(
        f"forwarded {stats.published} lines ({stats.duplicates} already published)", err=True
    )


def _parsed(parse: Callable[[str], T], value: str, problems: list[str]) -> T | None:
    """``parse(value)``, or None with its complaint added to ``problems``."""
    try:
        return parse(value)
    except SettingsError as error:
        problems.append(str(error))
        return None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@contextmanager
def _settings_errors(command: str) -> Iterator[None]:
    try:
        yield
    except (SettingsError, WslogError, ValueError) as exc:
        typer.echo(f"wslog {command}: {exc}", err=True)
        raise typer.Exit(2) from exc
