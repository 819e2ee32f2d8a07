"""One pod's container log, followed and resumed so that no line is lost or repeated.

A ``LogStream`` follows ``/log?follow&timestamps``. A stream that ends reconnects with backoff
from ``sinceTime`` = its last timestamp truncated to the second (the API's precision), and skips
the re-served overlap exactly (``resume``). Before every reconnect the earlier container instance
is read with ``previous=true`` from the same cursor, so lines a restarted container wrote after
the stream broke are kept. At most ``max_concurrent_streams`` log requests are open at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass

import urllib3
from kubernetes.client.exceptions import ApiException

from analyzer.lines import LineAssembler
from exporter.kube.api import KIND, Api, Backoff, denial, iter_body, restart_reason, shutdown
from exporter.kube.resume import Cursor, Resume
from exporter.settings import KubeSettings
from exporter.sources import (
    TIMESTAMPS,
    RestartReason,
    Sink,
    SourceEvents,
    emit,
    lines_of,
)

__all__ = ["Health", "LogStream", "PodRef", "Shared"]

log = logging.getLogger("wslog.exporter.kube")  # under "wslog": JSON lines like the rest


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


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Shared:
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

    def __init__(self, pod: PodRef, cursor: Cursor | None, shared: Shared) -> None:
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
            shutdown(response)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._shared.health.clear(f"log:{self.pod.source}")

    def _run(self) -> None:
        shared, backoff = self._shared, Backoff(self._shared.settings)
        while not shared.stop.is_set():
            reason, delivered = self._connect_once()
            if self._ending:
                break
            if delivered:
                backoff.reset()
            shared.events.stream_restarted(KIND, self.pod.source, self._reason(reason))
            if backoff.wait(shared.stop):
                break

    def _reason(self, reason: RestartReason | None) -> RestartReason:
        if self._restarted_since_open:
            return RestartReason.CONTAINER_RESTART
        return reason or RestartReason.END_OF_STREAM

    def _connect_once(self) -> tuple[RestartReason | None, bool]:
        """One connection; returns why it ended (None: normal end) and whether lines came."""
        shared = self._shared
        while not shared.slots.acquire(timeout=0.2):
            if shared.stop.is_set():
                return None, False
        try:
            if self._name_may_have_moved and not self._same_pod():
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

    @property
    def _ending(self) -> bool:
        """The source is stopping, or the pod is gone: this stream ends after its last read."""
        return self._shared.stop.is_set() or self._retired.is_set()

    @property
    def _restarted_since_open(self) -> bool:
        """The watch saw the container restart after the current connection was opened."""
        return self._restarts_known > self._restarts_seen

    @property
    def _name_may_have_moved(self) -> bool:
        """The pod's name may now mean another pod (or none): a connection came before, or the
        pod retired. Before the first, the watch has just shown the name to be ours."""
        return bool(self._connections or self._retired.is_set())

    @property
    def _may_have_previous_instance(self) -> bool:
        """An earlier container instance may hold lines not yet delivered: a connection came
        before (the container may have restarted since), or the watch saw a restart."""
        return not (self._connections == 0 and self._restarts_known == 0)

    def _broken_by_us(self, *, opened: bool) -> bool:
        """A read error is our own doing, and ends the read quietly, only on the followed
        stream while ending: ``close`` shuts its socket on stop or after retirement. A read of
        the previous instance is never closed by us, so its errors are real and re-raised."""
        return opened and self._ending

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
        if not self._may_have_previous_instance:
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
            for data in iter_body(response):
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
            if not self._broken_by_us(opened=opened):
                raise
        finally:
            with self._lock:
                self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
            if opened:
                shared.events.stream_closed(KIND, self.pod.source)
        return delivered
