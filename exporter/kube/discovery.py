"""Which pods to follow: list + watch, reconciled into one ``LogStream`` per pod.

Discovery is list + watch from the list's resourceVersion; a 410 (expired) relists and
reconciles, so pods created or deleted during the gap are neither missed nor leaked. A pod is
followed once its container has started (``started``), and a namesake with another uid is a new
pod. The container predicates are shared with ``snapshot``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from exporter.kube.api import KIND, Backoff, denial, restart_reason, status_message
from exporter.kube.resume import Cursor
from exporter.kube.streams import LogStream, PodRef, Shared
from exporter.sources import RestartReason

__all__ = ["Registry", "Watcher", "container_status", "has_container", "started"]

log = logging.getLogger("wslog.exporter.kube")  # under "wslog": JSON lines like the rest
# The client's Watch is untyped; call it through Any.
new_watch: Any = watch.Watch


def has_container(pod: dict[str, Any], name: str) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    return any(c.get("name") == name for c in containers)


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for item in status.get(key) or []:
            if item.get("name") == name:
                return dict(item)
    return {}


def started(pod: dict[str, Any], name: str) -> bool:
    """Whether the container ever ran, so that its log can be asked for."""
    status = container_status(pod, name)
    state = status.get("state") or {}
    return bool(
        "running" in state
        or "terminated" in state
        or status.get("lastState", {}).get("terminated")
        or status.get("restartCount")
    )


class Registry:
    """The pods being followed, reconciled from lists and updated from watch events."""

    def __init__(self, shared: Shared, start: Cursor | None) -> None:
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
        gone = kind == "DELETED" or not has_container(pod, self._shared.settings.container)
        if gone:  # deleted, or no longer has the container this source follows
            self._remove(key)
            return
        if kind not in ("ADDED", "MODIFIED"):
            return
        uid = str(meta.get("uid") or "")
        with self._lock:
            known = self._pods.get(key)
        replaced = known is not None and known[0] != uid  # a namesake: another pod
        if replaced:
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
        if stream is None and started(pod, container):
            stream = LogStream(PodRef(key[0], key[1], uid), cursor, self._shared)
            stream.notice_restarts(int(container_status(pod, container).get("restartCount") or 0))
            stream.thread.start()
        elif stream is not None:
            stream.notice_restarts(int(container_status(pod, container).get("restartCount") or 0))
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

    def __init__(self, namespace: str | None, registry: Registry, shared: Shared) -> None:
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
                    self._unreachable(f"HTTP {error.status} {status_message(error)}", backoff)
            except (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as error:
                reason = restart_reason(error)
                self._unreachable(str(error), backoff)
            if shared.stop.is_set():
                break
            shared.events.stream_restarted(KIND, self._key, reason)
            relist_now = reason is RestartReason.WATCH_EXPIRED  # a 410 is routine: no backoff
            if not relist_now and backoff.wait(shared.stop):
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
