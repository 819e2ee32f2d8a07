"""``wslog analyze --kubernetes``: each selected pod's istio-proxy log as it is now, read once.

No follow: one request per container instance, with ``timestamps=true`` (the deframer reads the
kubelet's timestamps) and ``sinceTime`` for ``--since``. A container that restarted is read with
``previous=true`` first: the instance that crashed is often the one an incident is about
(docs/design.md section 5). Each pod becomes one byte stream named ``namespace/pod``, the name
the rest of wslog reads the pod's identity from, and ``analyzer.inputs`` decodes it like a file.

Streaming, not copies: a stream is opened when the analysis first reads it and handed over as
the API server sends it, so memory holds one read block whatever the logs' size. The analysis
reads its inputs in time order, a block (8 MiB) at a time, so it opens the pods one after the
other; ``Snapshot`` sends the requests of the next ``max_concurrent_streams`` pods ahead on
threads, so their round trips overlap. A pod whose log is longer than a block keeps its
connection until the analysis comes back to it.

Gateways: Istio's ingress and egress gateways run Envoy in a container named ``istio-proxy``
too, so they are read whenever ``-n``/``-l`` select their pods.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from kubernetes.client.exceptions import ApiException

from analyzer.errors import WslogError
from exporter.kube.api import Api, iter_body, status_message  # the log source's own rules
from exporter.kube.discovery import container_status, has_container, started
from exporter.kube.resume import NS, Cursor
from exporter.settings import KubeSettings
from exporter.sources import SourceError

__all__ = ["PodLog", "Snapshot", "SnapshotError"]

RBAC = (
    "reading logs needs get and list on pods and get on pods/log in the namespaces read "
    "(check with: kubectl auth can-i get pods --subresource=log -n NAMESPACE); "
    "or choose another --context or --kubeconfig"
)
WHERE = "pass --kubeconfig FILE or --context NAME (kubectl config get-contexts lists them)"


class SnapshotError(WslogError):
    """The cluster's logs could not be read; the message says what to do."""


@dataclass(frozen=True)
class PodLog:
    """A pod whose container is read: both instances when it restarted."""

    namespace: str
    name: str
    restarted: bool

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"


_Opened = list[urllib3.BaseHTTPResponse]


class Snapshot:
    """The selected pods' logs, each read once. Use as a context manager: leaving it releases
    every request still open, and the client."""

    def __init__(
        self, settings: KubeSettings, *, since: datetime | None = None, api: Api | None = None
    ) -> None:
        self.settings = settings
        self._cursor = Cursor(math.floor(since.timestamp()) * NS) if since else None
        self._api = api or _connect(settings)
        self._pool = ThreadPoolExecutor(
            settings.max_concurrent_streams, thread_name_prefix="wslog-snapshot"
        )
        self._order: list[PodLog] = []
        self._position: dict[PodLog, int] = {}
        self._ahead: dict[PodLog, Future[_Opened]] = {}
        self._sent: set[PodLog] = set()
        self.not_started: list[str] = []  # pods whose container never ran
        self.no_log: list[str] = []  # pods gone, or not started, by the time their log was read

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pods(self) -> list[PodLog]:
        """The pods with the container in every selected namespace, sorted by namespace/name."""
        found: dict[str, PodLog] = {}
        for namespace in self.settings.namespaces or (None,):
            for pod in self._list(namespace):
                found.setdefault(pod.source, pod)
        self._order = sorted(found.values(), key=lambda pod: pod.source)
        self._position = {pod: index for index, pod in enumerate(self._order)}
        return list(self._order)

    def opener(self, pod: PodLog) -> Callable[[], BinaryIO]:
        """What opens ``pod``'s stream when the analysis first reads it."""
        return lambda: self.open(pod)

    def open(self, pod: PodLog) -> BinaryIO:
        """``pod``'s log, previous instance first, as one stream; the requests of the next pods
        (in ``pods()`` order, the order the analysis opens them) are sent meanwhile."""
        position = self._position.get(pod, len(self._order))
        for later in self._order[position : position + self.settings.max_concurrent_streams]:
            if later not in self._sent:
                self._sent.add(later)
                self._ahead[later] = self._pool.submit(self._request, later)
        future = self._ahead.pop(pod, None) or self._pool.submit(self._request, pod)
        return io.BufferedReader(_PodStream(pod.source, future.result()))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for future in self._ahead.values():
            if not future.cancelled() and future.exception() is None:
                for response in future.result():
                    _abandon(response)
        self._ahead.clear()
        self._api.client.close()

    def _list(self, namespace: str | None) -> Iterator[PodLog]:
        container = self.settings.container
        what = f"listing pods in namespace {namespace}" if namespace else "listing pods"
        for item in self._call(lambda: self._api.list_pods(namespace)[0], what):
            meta = item.get("metadata") or {}
            pod = (str(meta.get("namespace")), str(meta.get("name")))
            if not has_container(item, container):
                continue
            if not started(item, container):
                self.not_started.append("/".join(pod))
                continue
            status = container_status(item, container)
            ended = (status.get("lastState") or {}).get("terminated")
            yield PodLog(*pod, restarted=bool(status.get("restartCount") or ended))

    def _request(self, pod: PodLog) -> _Opened:
        """Open the previous instance's log (when kept) and the current one's."""
        opened: _Opened = []
        try:
            if pod.restarted and (previous := self._open_log(pod, previous=True)) is not None:
                opened.append(previous)
            current = self._open_log(pod, previous=False)
        except BaseException:
            for response in opened:
                _abandon(response)
            raise
        if current is None:
            self.no_log.append(pod.source)
        else:
            opened.append(current)
        return opened

    def _open_log(self, pod: PodLog, *, previous: bool) -> urllib3.BaseHTTPResponse | None:
        """One instance's log; None when there is none (400 or 404: the container is not
        running yet, the pod is gone, or no earlier instance was kept)."""
        try:
            response: urllib3.BaseHTTPResponse = self._call(
                lambda: self._api.open_log(
                    pod.namespace, pod.name, follow=False, previous=previous, cursor=self._cursor
                ),
                f"reading the log of pod {pod.source}",
                absent=(400, 404),
            )
        except _Absent:
            return None
        return response

    def _call(self, call: Callable[[], Any], what: str, *, absent: tuple[int, ...] = ()) -> Any:
        try:
            return call()
        except ApiException as error:
            if error.status in absent:
                raise _Absent from error
            raise SnapshotError(_refused(error, what)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            host = self._api.client.configuration.host
            raise SnapshotError(
                f"cannot reach the API server at {host} {what}: {error}; check that the cluster "
                f"is up and that the kubeconfig points to it ({WHERE})"
            ) from error


class _Absent(Exception):
    """The API answered that what was asked for is not there."""


class _PodStream(io.RawIOBase):
    """The bodies of a pod's log responses, one after the other, as one raw byte stream. A
    broken transfer is an ``OSError`` (the input reader keeps the lines read before it and
    counts the rest as one truncated line)."""

    def __init__(self, source: str, responses: _Opened) -> None:
        self._source = source
        self._responses = responses
        self._chunks = self._bodies()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # typeshed: WriteableBuffer
        while not self._pending:
            try:
                chunk = next(self._chunks, None)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise OSError(f"the log stream of {self._source} broke: {error}") from error
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        for response in self._responses:
            _abandon(response)
        self._responses = []
        super().close()

    def _bodies(self) -> Iterator[bytes]:
        for response in self._responses:
            yield from iter_body(response)
            response.release_conn()  # read to its end: the connection serves the next request


def _abandon(response: urllib3.BaseHTTPResponse) -> None:
    """Close a response whether or not it was read to its end (a connection released to the
    pool before is left there)."""
    response.close()
    response.release_conn()


def _connect(settings: KubeSettings) -> Api:
    _require_kubeconfig(settings.kubeconfig)
    try:
        return Api.connect(settings)
    except SourceError as error:
        raise SnapshotError(f"{error}; {WHERE}") from error


def _require_kubeconfig(kubeconfig: str | None) -> None:
    """The client skips a missing file silently and then finds "no configuration": name it."""
    paths = [p for p in (kubeconfig or "").split(os.pathsep) if p]
    if paths and not any(Path(p).expanduser().exists() for p in paths):
        raise SnapshotError(f"{kubeconfig}: no such kubeconfig file (--kubeconfig or KUBECONFIG)")


def _refused(error: ApiException, what: str) -> str:
    if error.status == 401:
        return (
            f"Unauthorized (401) {what}: the API server rejected the credentials (an expired "
            f"token?); log in again, or {WHERE}"
        )
    if error.status == 403:
        return f"Forbidden (403) {what}: {status_message(error)}; {RBAC}"
    return f"{what} failed ({error.status} {error.reason}): {status_message(error)}; retry"
