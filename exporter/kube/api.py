"""The Kubernetes API as the log source uses it: the client calls, and what their errors mean.

Every call the source makes (list and watch pods, read a pod's uid, open ``/log``) goes through
``Api``; the rest of ``exporter.kube`` never builds a request. Beside it sit the rules for an
``ApiException``: which ``RestartReason`` it is (``restart_reason``), the health reason for a
401/403 (``denial``), the server's own words (``status_message``), and ``Backoff`` for retries.
``snapshot`` (``wslog analyze --kubernetes``) shares all of it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from exporter.kube.resume import Cursor, since_time
from exporter.settings import KubeSettings
from exporter.sources import RestartReason, SourceError

__all__ = [
    "KIND",
    "Api",
    "Backoff",
    "denial",
    "iter_body",
    "restart_reason",
    "shutdown",
    "status_message",
]

KIND = "kubernetes"
RBAC_FIX = (
    "grant the exporter's service account get/list/watch on pods and get on pods/log "
    '(ClusterRole rules: apiGroups [""], resources ["pods"], verbs ["get","list","watch"]; '
    'apiGroups [""], resources ["pods/log"], verbs ["get"]) and bind it'
)
# The client's config loaders are untyped; call them through Any.
config: Any = kube_config


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


def status_message(error: ApiException) -> str:
    try:
        body = orjson.loads(error.body or b"{}")
    except orjson.JSONDecodeError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.reason or "").strip()


def denial(error: ApiException, what: str) -> str:
    """The health reason for a 401/403: what failed, the server's words, and the fix."""
    detail = status_message(error)
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


def iter_body(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as it arrives: each chunk of a chunked response, else what one read gives."""
    if resp.chunked:
        yield from resp.stream(None, decode_content=False)
        return
    while data := resp.read1(65536, decode_content=False):
        yield data


def shutdown(resp: urllib3.BaseHTTPResponse) -> None:
    """Unblock a thread reading ``resp`` from another thread."""
    with contextlib.suppress(Exception):
        resp.shutdown()
        return
    conn = getattr(resp, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _in_cluster_first(settings: KubeSettings) -> bool:
    """Try in-cluster credentials first: asked for, or nothing else was (no kubeconfig given).
    Only when they were asked for is their absence an error; else the kubeconfig is tried."""
    return bool(settings.in_cluster or (settings.in_cluster is None and not settings.kubeconfig))


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
            if _in_cluster_first(settings):
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
