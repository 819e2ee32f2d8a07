"""A fake Kubernetes API server speaking the real wire format, for driving the real client.

It serves, on 127.0.0.1 and a free port, exactly what a log tailer needs: pod list and
watch (with resourceVersion, labelSelector, 410 expiry), and the pod log API streamed with
chunked transfer encoding (``follow``, ``timestamps``, ``sinceTime`` at whole-second
precision so overlaps are re-served as the real API does, ``sinceSeconds``, ``previous``).
Faults are injected through methods, so tests read as scenarios::

    with FakeKube() as kube:
        kube.add_pod("default", "web-1", {"app": "web"})
        kube.append_lines("default", "web-1", ["hello"])
        kube.cut_log_streams("default", "web-1", mid_line=True)
        kube.fail_next("log", 500, times=2)

The fake knows nothing about wslog: lines are opaque strings, and the raw lines it served
(timestamp prefix included) are available from ``log_lines`` for exact comparisons.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from analyzer.lines import Overlong
from exporter.sources import Chunk

__all__ = ["FakeKube", "Recorder", "format_rfc3339nano", "parse_rfc3339", "wait"]

TOKEN = "fake-token"
LIST_PATH = re.compile(r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/pods$")
LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")


def format_rfc3339nano(ts_ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction are trimmed."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def parse_rfc3339(text: str) -> int:
    """Whole seconds of an RFC 3339 time, as the API server reads ``sinceTime``."""
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(stamp.timestamp()) * 1_000_000_000


@dataclass
class _Instance:
    lines: list[tuple[int, str]] = field(default_factory=list)  # (timestamp ns, raw text)


@dataclass
class _Container:
    name: str
    init: bool = False  # a native sidecar (initContainers with restartPolicy Always)
    instances: list[_Instance] = field(default_factory=lambda: [_Instance()])


@dataclass
class _Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    containers: dict[str, _Container]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    pending: str | None = None  # None: running; "empty": log answers 200 empty; "400"
    deleted: bool = False
    resource_version: int = 0

    def to_json(self) -> dict[str, Any]:
        main = [c for c in self.containers.values() if not c.init]
        init = [c for c in self.containers.values() if c.init]
        spec: dict[str, Any] = {"containers": [{"name": c.name, "image": "x"} for c in main]}
        if init:
            spec["initContainers"] = [
                {"name": c.name, "image": "x", "restartPolicy": "Always"} for c in init
            ]
        status: dict[str, Any] = {"phase": "Pending" if self.pending else "Running"}
        status["containerStatuses"] = [self._status(c) for c in main]
        if init:
            status["initContainerStatuses"] = [self._status(c) for c in init]
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "labels": dict(self.labels),
                "resourceVersion": str(self.resource_version),
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": spec,
            "status": status,
        }

    def _status(self, container: _Container) -> dict[str, Any]:
        state: dict[str, Any]
        if self.pending:
            state = {"waiting": {"reason": "PodInitializing"}}
        else:
            state = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
        return {
            "name": container.name,
            "image": "x",
            "imageID": "x",
            "ready": not self.pending,
            "restartCount": len(container.instances) - 1,
            "started": not self.pending,
            "state": state,
        }


@dataclass
class _Failure:
    kind: str  # "list", "watch", "log", "get"
    status: int
    times: int
    namespace: str | None = None
    name: str | None = None


@dataclass
class _Cut:
    namespace: str
    name: str
    mid_line: bool
    clean: bool
    after_lines: int | None  # cut once this many lines were written on a stream; None: now


class FakeKube:
    """The fake API server; start it with ``with FakeKube() as kube`` or ``start()``."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._rv = 100
        self._compacted_rv = 0
        self._failures: list[_Failure] = []
        self._cuts: list[_Cut] = []
        self._denied: set[str] = set()
        self._slow: dict[tuple[str, str], float] = {}
        self._stopping = False
        self._expire_generation = 0
        self.token = TOKEN
        self.requests: list[tuple[str, str]] = []  # (kind, path?query)
        self.open_log_streams = 0
        self.max_open_log_streams = 0
        self._dir = tempfile.TemporaryDirectory(prefix="fake-k8s-")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.close_all()
        self._server.server_close()
        self._dir.cleanup()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def kubeconfig_path(self) -> str:
        """A kubeconfig (context ``fake``) that points the real client at this server."""
        path = Path(self._dir.name) / "kubeconfig"
        if not path.exists():
            path.write_text(self.kubeconfig_text())
        return str(path)

    def kubeconfig_text(self, token: str | None = None) -> str:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        return json.dumps(config)  # JSON is valid YAML

    # -- the cluster's state ---------------------------------------------------------------

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str] | None = None,
        containers: Sequence[str] = ("app", "istio-proxy"),
        lines: Iterable[str] = (),
        *,
        init_containers: Sequence[str] = (),
        pending: str | None = None,
    ) -> None:
        """A new pod (ADDED event). ``pending``: None (running), "empty" or "400": how its
        log endpoint answers until ``start_pod``."""
        with self._lock:
            pod = _Pod(
                namespace,
                name,
                dict(labels or {}),
                {c: _Container(c) for c in containers},
                pending=pending,
            )
            pod.containers.update({c: _Container(c, init=True) for c in init_containers})
            self._pods[(namespace, name)] = pod
            self._record("ADDED", pod)
        if lines:
            self.append_lines(namespace, name, lines)

    def start_pod(self, namespace: str, name: str) -> None:
        """A pending pod's containers start (MODIFIED event)."""
        with self._lock:
            pod = self._pods[(namespace, name)]
            pod.pending = None
            self._record("MODIFIED", pod)

    def append_lines(
        self,
        namespace: str,
        name: str,
        lines: Iterable[str],
        container: str = "istio-proxy",
        *,
        timestamps: Iterable[int] | None = None,
    ) -> list[str]:
        """The container writes ``lines``; returns them as the log API serves them
        (RFC3339Nano timestamp, a space, the line). ``timestamps`` (ns) default to now."""
        with self._lock:
            instance = self._pods[(namespace, name)].containers[container].instances[-1]
            stamps = list(timestamps) if timestamps is not None else None
            served = []
            for index, line in enumerate(lines):
                ts = stamps[index] if stamps is not None else time.time_ns()
                instance.lines.append((ts, line))
                served.append(f"{format_rfc3339nano(ts)} {line}")
            self._lock.notify_all()
            return served

    def restart(self, namespace: str, name: str, container: str = "istio-proxy") -> None:
        """The container restarts: a new instance, restartCount + 1 (MODIFIED event); the old
        instance's lines stay available with previous=true and its follow streams end."""
        with self._lock:
            pod = self._pods[(namespace, name)]
            pod.containers[container].instances.append(_Instance())
            self._record("MODIFIED", pod)

    def delete(self, namespace: str, name: str) -> None:
        """The pod goes away (DELETED event); its follow streams end, its logs 404."""
        with self._lock:
            pod = self._pods.pop((namespace, name))
            pod.deleted = True
            self._record("DELETED", pod)

    def set_labels(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        with self._lock:
            pod = self._pods[(namespace, name)]
            pod.labels = dict(labels)
            self._record("MODIFIED", pod)

    def log_lines(
        self, namespace: str, name: str, container: str = "istio-proxy", *, since_ns: int = 0
    ) -> list[str]:
        """Every line of every instance of the container, as the log API serves them."""
        with self._lock:
            pod = self._pods.get((namespace, name)) or self._find_deleted(namespace, name)
            return [
                f"{format_rfc3339nano(ts)} {text}"
                for instance in pod.containers[container].instances
                for ts, text in instance.lines
                if ts >= since_ns
            ]

    # -- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        kind: str,
        status: int,
        times: int = 1,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> None:
        """The next ``times`` requests of ``kind`` ("list", "watch", "log", "get") answer
        ``status`` with a Status body (500, 401, 403, 410, 429 ...)."""
        with self._lock:
            self._failures.append(_Failure(kind, status, times, namespace, name))

    def deny(self, resource: str) -> None:
        """RBAC: every request for ``resource`` ("pods" or "pods/log") is forbidden (403)
        until ``allow``."""
        with self._lock:
            self._denied.add(resource)

    def allow(self, resource: str) -> None:
        with self._lock:
            self._denied.discard(resource)

    def cut_log_streams(
        self,
        namespace: str,
        name: str,
        *,
        mid_line: bool = True,
        clean: bool = False,
        after_lines: int | None = None,
    ) -> None:
        """End the pod's follow stream: now, or once ``after_lines`` lines went out on it.
        ``mid_line`` first writes half of the next pending line; ``clean`` ends the chunked
        body properly (like containerd closing a stream) instead of dropping the socket."""
        with self._lock:
            self._cuts.append(_Cut(namespace, name, mid_line, clean, after_lines))
            self._lock.notify_all()

    def slow(self, namespace: str, name: str, delay_s: float) -> None:
        """Serve the pod's log in small pieces, ``delay_s`` apart (lines split across reads)."""
        with self._lock:
            self._slow[(namespace, name)] = delay_s

    def expire_watches(self) -> None:
        """Compact history: open watches get an ERROR 410 event and end; watching from any
        resourceVersion seen so far answers 410 too, so clients must relist."""
        with self._lock:
            self._compacted_rv = self._rv
            self._expire_generation += 1
            self._lock.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` is true (checked on every state change or 20 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return bool(predicate(self))

    def count_requests(self, kind: str, contains: str = "") -> int:
        with self._lock:
            return sum(1 for k, path in self.requests if k == kind and contains in path)

    # -- internals used by the handler -----------------------------------------------------

    def _find_deleted(self, namespace: str, name: str) -> _Pod:
        for _, _, obj in reversed(self._events):
            meta = obj["metadata"]
            if (meta["namespace"], meta["name"]) == (namespace, name):
                return obj["__pod__"]  # type: ignore[no-any-return]
        raise KeyError((namespace, name))

    def _record(self, kind: str, pod: _Pod) -> None:
        self._rv += 1
        pod.resource_version = self._rv
        obj = pod.to_json()
        obj["__pod__"] = pod
        self._events.append((self._rv, kind, obj))
        self._lock.notify_all()

    def _take_failure(self, kind: str, namespace: str | None, name: str | None) -> int | None:
        for failure in self._failures:
            if failure.kind != kind or failure.times <= 0:
                continue
            if failure.namespace not in (None, namespace) or failure.name not in (None, name):
                continue
            failure.times -= 1
            return failure.status
        return None

    def _take_cut(self, namespace: str, name: str, written: int) -> _Cut | None:
        for cut in self._cuts:
            if (cut.namespace, cut.name) != (namespace, name):
                continue
            if cut.after_lines is None or written >= cut.after_lines:
                self._cuts.remove(cut)
                return cut
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeKube

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.sockets.discard(request)

    def close_all(self) -> None:
        with self.sockets_lock:
            for sock in list(self.sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Cutoff(Exception):
    """The handler dropped the connection on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeKube:
        return self.server.fake

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(url.path, query)
        except _Cutoff:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str, query: dict[str, str]) -> None:
        if (match := LIST_PATH.match(path)) is not None:
            kind = "watch" if query.get("watch") in ("true", "1") else "list"
            namespace, name, resource = match["ns"], None, "pods"
        elif (match := LOG_PATH.match(path)) is not None:
            kind, namespace, name, resource = "log", match["ns"], match["name"], "pods/log"
        elif (match := POD_PATH.match(path)) is not None:
            kind, namespace, name, resource = "get", match["ns"], match["name"], "pods"
        else:
            self._status(404, "NotFound", "the server could not find the requested resource")
            return
        with self.fake._lock:
            self.fake.requests.append((kind, self.path))
            failure = self.fake._take_failure(kind, namespace, name)
            denied = resource in self.fake._denied
        if self.headers.get("Authorization") != f"Bearer {self.fake.token}" or failure == 401:
            self._status(401, "Unauthorized", "Unauthorized")
        elif denied or failure == 403:
            self._forbidden(resource, namespace, name)
        elif failure is not None:
            self._status(failure, _REASONS.get(failure, "InternalError"), "injected failure")
        elif kind == "list":
            self._list(namespace, query)
        elif kind == "watch":
            self._watch(namespace, query)
        elif kind == "get":
            self._get(namespace, name or "")
        else:
            self._log(namespace, name or "", query)

    # -- plain responses -------------------------------------------------------------------

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._json(code, _status_object(code, reason, message))

    def _forbidden(self, resource: str, namespace: str | None, name: str | None) -> None:
        subject = f'pods "{name}"' if name else "pods"
        verb = "get" if name else "list"
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        message = (
            f'{subject} is forbidden: User "system:serviceaccount:wslog:wslog" cannot {verb} '
            f'resource "{resource}" in API group "" {scope}'
        )
        self._status(403, "Forbidden", message)

    # -- list, get and watch ---------------------------------------------------------------

    def _matching(self, namespace: str | None, selector: str) -> list[_Pod]:
        return [
            pod
            for (ns, _), pod in sorted(self.fake._pods.items())
            if namespace in (None, ns) and _selects(selector, pod.labels)
        ]

    def _list(self, namespace: str | None, query: dict[str, str]) -> None:
        with self.fake._lock:
            items = [p.to_json() for p in self._matching(namespace, query.get("labelSelector", ""))]
            rv = str(self.fake._rv)
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}
        self._json(200, {**body, "items": items})

    def _get(self, namespace: str, name: str) -> None:
        with self.fake._lock:
            pod = self.fake._pods.get((namespace, name))
            body = pod.to_json() if pod else None
        if body is None:
            self._status(404, "NotFound", f'pods "{name}" not found')
        else:
            self._json(200, body)

    def _watch(self, namespace: str | None, query: dict[str, str]) -> None:
        fake = self.fake
        selector = query.get("labelSelector", "")
        since_rv = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self._start_chunked("application/json")
        with fake._lock:
            generation = fake._expire_generation
            if since_rv < fake._compacted_rv:
                self._send_expired()
                return
            while not fake._stopping and time.monotonic() < deadline:
                for rv, kind, obj in fake._events:
                    if rv <= since_rv:
                        continue
                    since_rv = rv
                    meta = obj["metadata"]
                    if namespace in (None, meta["namespace"]) and _selects(
                        selector, meta["labels"]
                    ):
                        event = {"type": kind, "object": _public(obj)}
                        self._chunk(json.dumps(event).encode() + b"\n")
                if fake._expire_generation != generation:
                    self._send_expired()
                    return
                fake._lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        self._end_chunked()

    def _send_expired(self) -> None:
        status = _status_object(410, "Expired", "too old resource version")
        self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
        self._end_chunked()

    # -- logs ------------------------------------------------------------------------------

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        fake = self.fake
        with fake._lock:
            pod = fake._pods.get((namespace, name))
            if pod is None:
                self._status(404, "NotFound", f'pods "{name}" not found')
                return
            container_name = query.get("container") or next(iter(pod.containers))
            container = pod.containers.get(container_name)
            if container is None:
                message = f"container {container_name} is not valid for pod {name}"
                self._status(400, "BadRequest", message)
                return
            if pod.pending == "400":
                message = f'container "{container_name}" in pod "{name}" is waiting to start'
                self._status(400, "BadRequest", message)
                return
            previous = query.get("previous") in ("true", "1")
            index = len(container.instances) - (2 if previous else 1)
            if index < 0:
                message = (
                    f'previous terminated container "{container_name}" in pod "{name}" not found'
                )
                self._status(400, "BadRequest", message)
                return
            since_ns = _since(query)
            follow = query.get("follow") in ("true", "1") and not previous and not pod.pending
            timestamps = query.get("timestamps") in ("true", "1")
            fake.open_log_streams += 1
            fake.max_open_log_streams = max(fake.max_open_log_streams, fake.open_log_streams)
        try:
            self._start_chunked("text/plain")
            if pod.pending != "empty":
                self._stream_log(pod, container, index, since_ns, follow, timestamps)
            self._end_chunked()
        finally:
            with fake._lock:
                fake.open_log_streams -= 1

    def _stream_log(
        self,
        pod: _Pod,
        container: _Container,
        index: int,
        since_ns: int,
        follow: bool,
        timestamps: bool,
    ) -> None:
        fake = self.fake
        position, written = 0, 0
        while True:
            with fake._lock:
                cut = fake._take_cut(pod.namespace, pod.name, written) if follow else None
                instance = container.instances[index]
                batch = instance.lines[position:]
                position = len(instance.lines)
                ended = (
                    fake._stopping
                    or pod.deleted
                    or index != len(container.instances) - 1
                    or not follow
                )
                delay = fake._slow.get((pod.namespace, pod.name), 0.0)
            lines = [
                (f"{format_rfc3339nano(ts)} {text}" if timestamps else text).encode() + b"\n"
                for ts, text in batch
                if ts >= since_ns
            ]
            if cut is not None:
                self._cut(cut, lines)
                return
            for number, line in enumerate(lines, 1):
                self._write_line(line, delay)
                written += 1
                with fake._lock:
                    cut = fake._take_cut(pod.namespace, pod.name, written) if follow else None
                if cut is not None:
                    self._cut(cut, lines[number:])
                    return
            if ended and not batch:
                return
            if not batch:
                with fake._lock:
                    fake._lock.wait(0.2)

    def _cut(self, cut: _Cut, pending: list[bytes]) -> None:
        if cut.mid_line and pending:
            line = pending[0]
            self._chunk(line[: max(1, len(line) // 2)])
        if cut.clean:
            self._end_chunked()
            return
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Cutoff

    def _write_line(self, line: bytes, delay: float) -> None:
        if delay <= 0:
            self._chunk(line)
            return
        step = max(1, len(line) // 3)
        for start in range(0, len(line), step):
            self._chunk(line[start : start + step])
            time.sleep(delay)

    # -- chunked transfer encoding ---------------------------------------------------------

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def _status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "__pod__"}


def _since(query: dict[str, str]) -> int:
    if "sinceTime" in query:
        return parse_rfc3339(query["sinceTime"])
    if "sinceSeconds" in query:
        return time.time_ns() - int(query["sinceSeconds"]) * 1_000_000_000
    return 0


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    return all(_requirement(part.strip(), labels) for part in _split(selector))


def _split(selector: str) -> Iterator[str]:
    yield from (part for part in selector.split(",") if part.strip())


def _requirement(part: str, labels: dict[str, str]) -> bool:
    if "!=" in part:
        key, value = part.split("!=", 1)
        return labels.get(key.strip()) != value.strip()
    if "=" in part:
        key, value = part.replace("==", "=").split("=", 1)
        return labels.get(key.strip()) == value.strip()
    if part.startswith("!"):
        return part[1:].strip() not in labels
    return part in labels


# -- helpers for tests of any source ------------------------------------------------------


@dataclass
class Recorder:
    """A SourceEvents and a thread-safe sink that remember everything, for source tests."""

    chunks: list[Chunk] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    restarts: list[tuple[str, str]] = field(default_factory=list)
    healths: list[tuple[bool, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sink(self, chunk: Chunk) -> None:
        with self.lock:
            self.chunks.append(chunk)

    def stream_opened(self, kind: str, source: str) -> None:
        with self.lock:
            self.opened.append(source)

    def stream_closed(self, kind: str, source: str) -> None:
        with self.lock:
            self.closed.append(source)

    def stream_restarted(self, kind: str, source: str, reason: str) -> None:
        with self.lock:
            self.restarts.append((source, reason))

    def health(self, ok: bool, reason: str) -> None:
        with self.lock:
            self.healths.append((ok, reason))

    def lines(self, source: str | None = None) -> list[str | Overlong]:
        """The lines delivered (from ``source``)."""
        with self.lock:
            return [line for c in self.chunks if source in (None, c.source) for line in c.lines]

    def texts(self, source: str | None = None) -> list[str]:
        """The lines delivered, where the test sent no over-long one."""
        found = self.lines(source)
        texts = [line for line in found if not isinstance(line, Overlong)]
        assert len(texts) == len(found), "an over-long line where none was sent"
        return texts

    def following(self) -> set[str]:
        with self.lock:
            return set((Counter(self.opened) - Counter(self.closed)).keys())

    @property
    def active(self) -> int:
        with self.lock:
            return len(self.opened) - len(self.closed)


def wait(predicate: Callable[[], bool], timeout: float = 6.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
