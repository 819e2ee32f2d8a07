"""The kubernetes source: discover istio-proxy containers and follow their logs, losing nothing.

The ``exporter.kube`` package is the only place that imports ``kubernetes``. It respects
docs/design.md section 5:

- Discovery is list + watch from the list's resourceVersion; a 410 (expired) relists and
  reconciles, so pods created or deleted during the gap are neither missed nor leaked.
- Each pod's container gets a ``LogStream`` following ``/log?follow&timestamps``. A stream
  that ends reconnects with backoff from ``sinceTime`` = its last timestamp truncated to the
  second (the API's precision), and skips the re-served overlap exactly: lines older than the
  newest timestamp delivered, and as many lines *at* that timestamp as were delivered.
- Before every reconnect the earlier container instance is read with ``previous=true`` from
  the same cursor, so lines a restarted container wrote after the stream broke are kept.
- 401/403 report unhealthy with the RBAC fix and back off; they never spin.
- At most ``max_concurrent_streams`` log requests are open at once.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3
from kubernetes import client, watch
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from analyzer.lines import LineAssembler
from exporter.kube.resume import NS, Cursor, Resume, parse_timestamp, since_time
from exporter.sources import (
    TIMESTAMPS,
    KubeSettings,
    RestartReason,
    Sink,
    SourceError,
    SourceEvents,
    emit,
    lines_of,
)

__all__ = ["Cursor", "KubeSource", "LogStream", "Resume", "parse_timestamp", "since_time"]

KIND = "kubernetes"
RBAC_FIX = (
    "grant the exporter's service account get/list/watch on pods and get on pods/log "
    '(ClusterRole rules: apiGroups [""], resources ["pods"], verbs ["get","list","watch"]; '
    'apiGroups [""], resources ["pods/log"], verbs ["get"]) and bind it'
)
log = logging.getLogger("wslog.exporter.kube")  # under "wslog": JSON lines like the rest
# The client's config loaders and Watch are untyped; call them through Any.
config: Any = kube_config
new_watch: Any = watch.Watch

# -- small helpers ---------------------------------------------------------------------------


class Backoff:
    """Exponential backoff with jitter, waiting on the stop event so shutdown is prompt."""

    def __init__(self, settings: KubeSettings) -> None:
        self._initial, self._max = settings.backoff_initial_s, settings.backoff_max_s
        self._delay = self._initial

    def reset(self) -> None:
        self._delay = self._initial

    @property
    def next_s(self) -> float:
        """The longest the next wait may be."""
        return self._delay

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the current delay (or until stop); True when stopping."""
        stopped = stop.wait(self._delay * random.uniform(0.5, 1.0))
        self._delay = min(self._max, self._delay * 2)
        return stopped


class Health:
    """Folds problems from many workers into the one health signal, reported on change."""

    def __init__(self, events: SourceEvents) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self._reported: tuple[bool, str] | None = None

    def fail(self, key: str, reason: str) -> None:
        with self._lock:
            self._problems[key] = reason
            self._report()

    def clear(self, key: str) -> None:
        with self._lock:
            self._problems.pop(key, None)
            self._report()

    def _report(self) -> None:
        reasons = sorted(set(self._problems.values()))
        state = (not reasons, "; ".join(reasons[:3]))
        if state != self._reported:
            self._reported = state
            self._events.health(*state)


def _status_message(error: ApiException) -> str:
    try:
        body = orjson.loads(error.body or b"{}")
    except orjson.JSONDecodeError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.reason or "").strip()


def denial(error: ApiException, what: str) -> str:
    """The health reason for a 401/403: what failed, the server's words, and the fix."""
    detail = _status_message(error)
    if error.status == 401:
        return (
            f"Unauthorized (401) {what}: the API server rejected the credentials; check the "
            f"kubeconfig/context, or the service-account token (expired or revoked). {detail}"
        ).strip()
    return f"Forbidden (403) {what}: {detail}. Fix: {RBAC_FIX}."


def restart_reason(error: BaseException) -> RestartReason:
    if isinstance(error, ApiException):
        if error.status in (401, 403):
            return RestartReason.DENIED
        if error.status in (400, 404):
            return RestartReason.NOT_READY
        if error.status == 410:
            return RestartReason.WATCH_EXPIRED
        return RestartReason.SERVER_ERROR
    if isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout)):
        return RestartReason.TIMEOUT
    return RestartReason.CONNECTION_ERROR


def _iter_body(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as it arrives: each chunk of a chunked response, else what one read gives."""
    if resp.chunked:
        yield from resp.stream(None, decode_content=False)
        return
    while data := resp.read1(65536, decode_content=False):
        yield data


def _shutdown(resp: urllib3.BaseHTTPResponse) -> None:
    """Unblock a thread reading ``resp`` from another thread."""
    with contextlib.suppress(Exception):
        resp.shutdown()
        return
    conn = getattr(resp, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# -- the API, as this source uses it -----------------------------------------------------------


class Api:
    """The few calls the source makes, through the official client."""

    def __init__(self, api_client: Any, settings: KubeSettings) -> None:
        self.client = api_client
        self.core: Any = client.CoreV1Api(api_client)
        self._settings = settings

    @classmethod
    def connect(cls, settings: KubeSettings) -> Api:
        cfg = client.Configuration()
        try:
            if settings.in_cluster or (settings.in_cluster is None and not settings.kubeconfig):
                try:
                    config.load_incluster_config(client_configuration=cfg)
                except config.ConfigException:
                    if settings.in_cluster:
                        raise
                    config.load_kube_config(None, settings.context, client_configuration=cfg)
            else:
                config.load_kube_config(
                    settings.kubeconfig, settings.context, client_configuration=cfg
                )
        except (config.ConfigException, OSError) as error:
            message = f"cannot load Kubernetes credentials: {error}"
            raise SourceError(message, retryable=False) from error
        cfg.connection_pool_maxsize = settings.max_concurrent_streams + 8
        return cls(client.ApiClient(cfg), settings)

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        kwargs: dict[str, Any] = {
            "_preload_content": False,
            "_request_timeout": self._settings.request_timeout_s,
        }
        if self._settings.label_selector:
            kwargs["label_selector"] = self._settings.label_selector
        if namespace is None:
            resp = self.core.list_pod_for_all_namespaces(**kwargs)
        else:
            resp = self.core.list_namespaced_pod(namespace, **kwargs)
        body = orjson.loads(resp.data)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def watch_pods(
        self, namespace: str | None, resource_version: str, watcher: Any
    ) -> Iterator[dict[str, Any]]:
        timeout = self._settings.watch_timeout_s
        kwargs: dict[str, Any] = {
            "resource_version": resource_version,
            "timeout_seconds": timeout,
            "allow_watch_bookmarks": True,
            "_request_timeout": (self._settings.request_timeout_s, timeout + 30),
        }
        if self._settings.label_selector:
            kwargs["label_selector"] = self._settings.label_selector
        if namespace is None:
            return watcher.stream(self.core.list_pod_for_all_namespaces, **kwargs)  # type: ignore[no-any-return]
        return watcher.stream(self.core.list_namespaced_pod, namespace, **kwargs)  # type: ignore[no-any-return]

    def pod_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the pod now called ``namespace/name``, None when there is none."""
        try:
            resp = self.core.read_namespaced_pod(
                name,
                namespace,
                _preload_content=False,
                _request_timeout=self._settings.request_timeout_s,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return str(orjson.loads(resp.data)["metadata"]["uid"])

    def open_log(
        self, namespace: str, name: str, *, follow: bool, previous: bool, cursor: Cursor | None
    ) -> urllib3.BaseHTTPResponse:
        """Open ``/log`` with ``sinceTime`` (the generated method does not expose it)."""
        query: list[tuple[str, str]] = [
            ("container", self._settings.container),
            ("timestamps", "true"),
        ]
        if follow:
            query.append(("follow", "true"))
        if previous:
            query.append(("previous", "true"))
        if cursor is not None:
            query.append(("sinceTime", since_time(cursor.ts_ns)))
        request = self.client.param_serialize(
            method="GET",
            resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
            path_params={"namespace": namespace, "name": name},
            query_params=query,
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        timeout = (self._settings.request_timeout_s, self._settings.stream_idle_timeout_s)
        response = self.client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(
                http_resp=response, body=response.data.decode("utf-8", "replace"), data=None
            )
        raw: urllib3.BaseHTTPResponse = response.response
        return raw


# -- one pod's container ------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class _Shared:
    """What every LogStream of one source run needs."""

    api: Api
    settings: KubeSettings
    sink: Sink
    events: SourceEvents
    health: Health
    stop: threading.Event
    slots: threading.BoundedSemaphore


class LogStream:
    """Follows one pod's container log, reconnecting until the pod goes away or stop."""

    def __init__(self, pod: PodRef, cursor: Cursor | None, shared: _Shared) -> None:
        self.pod = pod
        self.cursor = cursor
        self._shared = shared
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._retired = threading.Event()
        self._restarts_seen = 0  # restartCount when the current connection was opened
        self._restarts_known = 0  # newest restartCount the watch reported
        self._connections = 0
        self.thread = threading.Thread(target=self.run, name=f"wslog-log-{pod.source}", daemon=True)

    def notice_restarts(self, restart_count: int) -> None:
        self._restarts_known = max(self._restarts_known, restart_count)

    def retire(self) -> None:
        """The pod is gone: finish reading what the server still sends, then end."""
        self._retired.set()
        timer = threading.Timer(self._shared.settings.deleted_grace_s, self.close)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._shared.health.clear(f"log:{self.pod.source}")

    def _run(self) -> None:
        shared, backoff = self._shared, Backoff(self._shared.settings)
        while not shared.stop.is_set():
            reason, delivered = self._connect_once()
            if shared.stop.is_set() or self._retired.is_set():
                break
            if delivered:
                backoff.reset()
            shared.events.stream_restarted(KIND, self.pod.source, self._reason(reason))
            if backoff.wait(shared.stop):
                break

    def _reason(self, reason: RestartReason | None) -> RestartReason:
        if self._restarts_known > self._restarts_seen:
            return RestartReason.CONTAINER_RESTART
        return reason or RestartReason.END_OF_STREAM

    def _connect_once(self) -> tuple[RestartReason | None, bool]:
        """One connection; returns why it ended (None: normal end) and whether lines came."""
        shared = self._shared
        while not shared.slots.acquire(timeout=0.2):
            if shared.stop.is_set():
                return None, False
        try:
            if (self._connections or self._retired.is_set()) and not self._same_pod():
                self._retired.set()  # gone, or replaced by a namesake whose log is not ours
                return None, False
            delivered = self._read_previous()
            self._restarts_seen = self._restarts_known
            follow = not self._retired.is_set()
            response = shared.api.open_log(
                self.pod.namespace,
                self.pod.name,
                follow=follow,
                previous=False,
                cursor=self.cursor,
            )
            shared.health.clear(f"log:{self.pod.source}")
            return None, self._follow(response) or delivered
        except ApiException as error:
            self._on_api_error(error)
            return restart_reason(error), False
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.debug("log stream %s: %s", self.pod.source, error)
            return restart_reason(error), False
        finally:
            shared.slots.release()

    def _same_pod(self) -> bool:
        """The log API is addressed by name only: make sure the name still means our pod."""
        return self._shared.api.pod_uid(self.pod.namespace, self.pod.name) == self.pod.uid

    def _on_api_error(self, error: ApiException) -> None:
        if error.status in (401, 403):
            what = f"reading pod {self.pod.source} or its log"
            self._shared.health.fail(f"log:{self.pod.source}", denial(error, what))
        elif error.status == 404 and not self._retired.is_set():
            log.debug("pod %s not found yet/anymore", self.pod.source)

    def _read_previous(self) -> bool:
        """Lines of the earlier container instance not yet delivered (only if there is one)."""
        if self._connections == 0 and self._restarts_known == 0:
            return False
        try:
            response = self._shared.api.open_log(
                self.pod.namespace,
                self.pod.name,
                follow=False,
                previous=True,
                cursor=self.cursor,
            )
        except ApiException as error:
            if error.status in (400, 404):
                return False  # no earlier instance (or gone): nothing to recover
            raise
        return self._read(response, opened=False)

    def _follow(self, response: urllib3.BaseHTTPResponse) -> bool:
        self._connections += 1
        return self._read(response, opened=True)

    def _read(self, response: urllib3.BaseHTTPResponse, *, opened: bool) -> bool:
        shared, resume = self._shared, Resume(self.cursor)
        with self._lock:
            self._response = response
        if opened:
            shared.events.stream_opened(KIND, self.pod.source)
        assembler, delivered = LineAssembler(shared.settings.max_line_bytes), False
        try:
            for data in _iter_body(response):
                fresh = resume.admit(lines_of(assembler.feed(data)))
                self.cursor = resume.cursor
                if fresh:
                    delivered = True
                    emit(
                        shared.sink,
                        self.pod.source,
                        fresh,
                        TIMESTAMPS,
                        shared.settings.chunk_max_lines,
                    )
                if shared.stop.is_set():
                    break
        except (urllib3.exceptions.HTTPError, OSError):
            if not (shared.stop.is_set() or self._retired.is_set()) or opened is False:
                raise
        finally:
            with self._lock:
                self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
            if opened:
                shared.events.stream_closed(KIND, self.pod.source)
        return delivered


# -- discovery -------------------------------------------------------------------------------


def _has_container(pod: dict[str, Any], name: str) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    return any(c.get("name") == name for c in containers)


def _container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for item in status.get(key) or []:
            if item.get("name") == name:
                return dict(item)
    return {}


def _started(pod: dict[str, Any], name: str) -> bool:
    """Whether the container ever ran, so that its log can be asked for."""
    status = _container_status(pod, name)
    state = status.get("state") or {}
    return bool(
        "running" in state
        or "terminated" in state
        or status.get("lastState", {}).get("terminated")
        or status.get("restartCount")
    )


class Registry:
    """The pods being followed, reconciled from lists and updated from watch events."""

    def __init__(self, shared: _Shared, start: Cursor | None) -> None:
        self._shared = shared
        self._start = start  # cursor for pods already running when the source started
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], tuple[str, Cursor | None, LogStream | None]] = {}

    def reconcile(self, namespace: str | None, items: list[dict[str, Any]], first: bool) -> None:
        """A fresh list of ``namespace`` (None: all): stop what is gone, follow what is new."""
        seen = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items}
        with self._lock:
            gone = [key for key in self._pods if namespace in (None, key[0]) and key not in seen]
        for key in gone:
            self._remove(key)
        for pod in items:
            self.apply("ADDED", pod, self._start if first else None)

    def apply(self, kind: str, pod: dict[str, Any], cursor: Cursor | None = None) -> None:
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED" or not _has_container(pod, self._shared.settings.container):
            self._remove(key)
            return
        if kind not in ("ADDED", "MODIFIED"):
            return
        uid = str(meta.get("uid") or "")
        with self._lock:
            known = self._pods.get(key)
        if known is not None and known[0] != uid:
            self._remove(key)
            known = None
        if known is None:
            known = (uid, cursor, None)
        self._update(key, pod, known)

    def _update(
        self,
        key: tuple[str, str],
        pod: dict[str, Any],
        known: tuple[str, Cursor | None, LogStream | None],
    ) -> None:
        uid, cursor, stream = known
        container = self._shared.settings.container
        if stream is None and _started(pod, container):
            stream = LogStream(PodRef(key[0], key[1], uid), cursor, self._shared)
            stream.notice_restarts(int(_container_status(pod, container).get("restartCount") or 0))
            stream.thread.start()
        elif stream is not None:
            stream.notice_restarts(int(_container_status(pod, container).get("restartCount") or 0))
        with self._lock:
            self._pods[key] = (uid, cursor, stream)

    def _remove(self, key: tuple[str, str]) -> None:
        with self._lock:
            known = self._pods.pop(key, None)
        if known is not None and known[2] is not None:
            known[2].retire()

    def streams(self) -> list[LogStream]:
        with self._lock:
            return [stream for _, _, stream in self._pods.values() if stream is not None]


class Watcher:
    """List + watch of one namespace (or all), feeding the registry, until stop."""

    def __init__(self, namespace: str | None, registry: Registry, shared: _Shared) -> None:
        self.namespace = namespace
        self._registry = registry
        self._shared = shared
        self._watch: Any = None
        self._key = f"watch:{namespace or '*'}"
        self.thread = threading.Thread(target=self.run, name=f"wslog-{self._key}", daemon=True)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def run(self) -> None:
        shared, backoff = self._shared, Backoff(self._shared.settings)
        resource_version: str | None = None
        first = True
        while not shared.stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list(first)
                    first = False
                resource_version = self._watch_from(resource_version, backoff)
                continue
            except ApiException as error:
                reason = restart_reason(error)
                if error.status == 410:
                    resource_version = None
                elif error.status in (401, 403):
                    shared.health.fail(self._key, denial(error, self._what()))
                else:
                    self._unreachable(f"HTTP {error.status} {_status_message(error)}", backoff)
            except (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as error:
                reason = restart_reason(error)
                self._unreachable(str(error), backoff)
            if shared.stop.is_set():
                break
            shared.events.stream_restarted(KIND, self._key, reason)
            if reason is not RestartReason.WATCH_EXPIRED and backoff.wait(shared.stop):
                break

    def _unreachable(self, error: str, backoff: Backoff) -> None:
        """Each failed attempt, at warning level and in /readyz: an unreachable API server is
        what an operator must see, not a silence."""
        reason = f"cannot reach the API server at {self._shared.api.host}: {error}"
        self._shared.health.fail(self._key, reason)
        log.warning("%s while %s; retrying in %.1f s", reason, self._what(), backoff.next_s)

    def _what(self) -> str:
        scope = f"in namespace {self.namespace}" if self.namespace else "in all namespaces"
        return f"listing and watching pods {scope}"

    def _list(self, first: bool) -> str:
        items, resource_version = self._shared.api.list_pods(self.namespace)
        self._shared.health.clear(self._key)
        self._registry.reconcile(self.namespace, items, first)
        return resource_version

    def _watch_from(self, resource_version: str, backoff: Backoff) -> str:
        self._watch = new_watch()
        if self._shared.stop.is_set():
            return resource_version
        try:
            for event in self._shared.api.watch_pods(self.namespace, resource_version, self._watch):
                obj = event.get("raw_object") or {}
                resource_version = str(
                    (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                )
                self._registry.apply(str(event.get("type")), obj)
                backoff.reset()
        except (urllib3.exceptions.HTTPError, OSError):
            if not self._shared.stop.is_set():
                raise
        return resource_version


# -- the source ------------------------------------------------------------------------------


class KubeSource:
    """``--source kubernetes``: every selected pod's istio-proxy log, exactly once."""

    def __init__(self, settings: KubeSettings, api: Api | None = None) -> None:
        self.settings = settings
        self._api = api

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        health = Health(events)
        try:
            api = self._api or Api.connect(self.settings)
        except SourceError as error:
            health.fail("config", str(error))
            raise
        slots = threading.BoundedSemaphore(self.settings.max_concurrent_streams)
        shared = _Shared(api, self.settings, sink, events, health, stop, slots)
        registry = Registry(shared, self._start_cursor())
        namespaces: tuple[str | None, ...] = self.settings.namespaces or (None,)
        watchers = [Watcher(namespace, registry, shared) for namespace in namespaces]
        for watcher in watchers:
            watcher.thread.start()
        stop.wait()
        self._shutdown(watchers, registry)

    def _start_cursor(self) -> Cursor:
        return Cursor(time.time_ns() - (self.settings.since_seconds or 0) * NS)

    def _shutdown(self, watchers: list[Watcher], registry: Registry) -> None:
        for watcher in watchers:
            watcher.stop()
        streams = registry.streams()
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + 5
        for thread in [w.thread for w in watchers] + [s.thread for s in streams]:
            thread.join(max(0.0, deadline - time.monotonic()))
