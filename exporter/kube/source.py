"""The kubernetes source: discover istio-proxy containers and follow their logs, losing nothing.

``KubeSource`` wires the parts together (docs/design.md section 5): ``discovery`` lists and
watches pods and keeps one ``streams.LogStream`` per selected container; each stream reads
through ``api`` and resumes from its cursor (``resume``). 401/403 report unhealthy with the
RBAC fix and back off; they never spin. At most ``max_concurrent_streams`` log requests are
open at once, and stop ends every watch and stream promptly.
"""

from __future__ import annotations

import threading
import time

from exporter.kube.api import Api
from exporter.kube.discovery import Registry, Watcher
from exporter.kube.resume import NS, Cursor
from exporter.kube.streams import Health, Shared
from exporter.settings import KubeSettings
from exporter.sources import Sink, SourceError, SourceEvents

__all__ = ["KubeSource"]


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
        shared = Shared(api, self.settings, sink, events, health, stop, slots)
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
