"""Read the mesh's configuration from a cluster for ``wslog doctor``, through the official client.

Services, Deployments and Pods (their labels), DestinationRules and EnvoyFilters (the first
``networking.istio.io`` version the server serves: v1, v1beta1, v1alpha3), the ``istio``
ConfigMap of the root namespace (the mesh config) and istiod's Deployment there (Istio's version).
Lists are read raw (``_preload_content=False``) so the documents are exactly what ``kubectl get
-o yaml`` shows, and go through the same ``parse`` as files do.

Part of the ``exporter.kube`` package, the one place that talks to Kubernetes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from analyzer.doctor.model import DEFAULT_ROOT_NAMESPACE, Inventory
from analyzer.doctor.parse import inventory_from_manifests
from analyzer.errors import WslogError

__all__ = ["MeshReadSettings", "read_cluster"]

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
config: Any = kube_config  # the client's loaders are untyped
NO_CLUSTER = "or --config FILES to check manifests without a cluster"
RBAC_HINT = (
    "grant list on services, pods, deployments (apps), destinationrules and envoyfilters "
    "(networking.istio.io) and get on configmaps in the root namespace"
)


class ClusterReadError(WslogError):
    """The cluster's configuration could not be read."""


@dataclass(frozen=True)
class MeshReadSettings:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    request_timeout_s: float = 30.0


def read_cluster(settings: MeshReadSettings) -> Inventory:
    reader = _Reader(_connect(settings), settings)
    return inventory_from_manifests(list(reader.manifests()))


def _connect(settings: MeshReadSettings) -> Any:
    cfg = client.Configuration()
    _require_kubeconfig(settings.kubeconfig)
    try:
        if settings.kubeconfig is None and settings.context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
                return client.ApiClient(cfg)
            except config.ConfigException:
                pass
        config.load_kube_config(settings.kubeconfig, settings.context, client_configuration=cfg)
    except (config.ConfigException, OSError) as error:
        raise ClusterReadError(_credentials_error(settings, error)) from error
    return client.ApiClient(cfg)


def _require_kubeconfig(kubeconfig: str | None) -> None:
    """The client skips missing files silently (KUBECONFIG may list several, as for kubectl)
    and then says only that no configuration was found; name the file that is not there."""
    paths = [p for p in (kubeconfig or "").split(os.pathsep) if p]
    if paths and not any(Path(p).expanduser().exists() for p in paths):
        missing = "no such file" if len(paths) == 1 else "none of these files exists"
        raise ClusterReadError(
            f"{kubeconfig}: {missing} (--kubeconfig or KUBECONFIG); pass an existing "
            f"kubeconfig, {NO_CLUSTER}"
        )


def _credentials_error(settings: MeshReadSettings, error: Exception) -> str:
    if settings.kubeconfig is None:
        return (
            f"no Kubernetes credentials (not in a pod; {error}); pass --kubeconfig FILE, "
            f"{NO_CLUSTER}"
        )
    context = f" (context {settings.context})" if settings.context else ""
    return (
        f"cannot load Kubernetes credentials from {settings.kubeconfig}{context}: {error}; "
        f"fix that file or choose another --context, {NO_CLUSTER}"
    )


class _Reader:
    def __init__(self, api_client: Any, settings: MeshReadSettings) -> None:
        self.core: Any = client.CoreV1Api(api_client)
        self.apps: Any = client.AppsV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.settings = settings
        self.served: dict[str, str] = {}  # plural -> the Istio API version the server serves

    def manifests(self) -> Iterator[dict[str, Any]]:
        s = self.settings
        scopes: tuple[str | None, ...] = s.namespaces or (None,)
        for namespace in scopes:
            yield from self._list("Service", self.core, "service", namespace)
            yield from self._list("Deployment", self.apps, "deployment", namespace)
            yield from self._list("Pod", self.core, "pod", namespace)
        for plural, kind in (
            ("destinationrules", "DestinationRule"),
            ("envoyfilters", "EnvoyFilter"),
        ):
            for namespace in _with_root(s.namespaces, s.root_namespace):
                yield from self._istio(plural, kind, namespace)
        if s.namespaces and s.root_namespace not in s.namespaces:
            yield from self._list("Deployment", self.apps, "deployment", s.root_namespace)
        yield from self._mesh_config()

    def _list(
        self, kind: str, api: Any, what: str, namespace: str | None
    ) -> Iterator[dict[str, Any]]:
        if namespace is None:
            call: Callable[..., Any] = getattr(api, f"list_{what}_for_all_namespaces")
            body = self._call(call, kind)
        else:
            body = self._call(getattr(api, f"list_namespaced_{what}"), kind, namespace)
        yield from _items(body, kind)

    def _istio(self, plural: str, kind: str, namespace: str | None) -> Iterator[dict[str, Any]]:
        """The first served version (remembered, so later namespaces do not probe again)."""
        known = self.served.get(plural)
        for version in (known,) if known else ISTIO_VERSIONS:
            try:
                body = self._list_custom(kind, version, plural, namespace)
            except _NotServed:
                continue
            self.served[plural] = version
            yield from _items(body, kind)
            return

    def _list_custom(self, kind: str, version: str, plural: str, namespace: str | None) -> Any:
        if namespace is None:
            call = self.custom.list_cluster_custom_object
            return self._call(call, kind, ISTIO_GROUP, version, plural, raise_404=True)
        call = self.custom.list_namespaced_custom_object
        return self._call(call, kind, ISTIO_GROUP, version, namespace, plural, raise_404=True)

    def _mesh_config(self) -> Iterator[dict[str, Any]]:
        call = self.core.read_namespaced_config_map
        try:
            body = self._call(
                call, "ConfigMap", "istio", self.settings.root_namespace, raise_404=True
            )
        except _NotServed:
            return  # no istio ConfigMap: Istio's defaults
        yield {"kind": "ConfigMap", "apiVersion": "v1", **body}

    def _call(
        self, call: Callable[..., Any], kind: str, *args: Any, raise_404: bool = False
    ) -> Any:
        try:
            resp = call(
                *args, _preload_content=False, _request_timeout=self.settings.request_timeout_s
            )
            return orjson.loads(resp.data)
        except ApiException as error:
            if error.status == 404 and raise_404:
                raise _NotServed from error
            raise ClusterReadError(_denied(kind, error)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ClusterReadError(
                f"cannot reach the API server reading {kind}s: {error}"
            ) from error


class _NotServed(Exception):
    """404: that resource (or API version) is not there."""


def _with_root(namespaces: tuple[str, ...], root: str) -> tuple[str | None, ...]:
    if not namespaces:
        return (None,)
    return tuple(dict.fromkeys((*namespaces, root)))


def _items(body: Any, kind: str) -> Iterator[dict[str, Any]]:
    for item in body.get("items") or [] if isinstance(body, dict) else []:
        if isinstance(item, dict):
            yield {"kind": kind, **item}


def _denied(kind: str, error: ApiException) -> str:
    if error.status in (401, 403):
        return f"reading {kind}s was refused ({error.status} {error.reason}): {RBAC_HINT}"
    return f"reading {kind}s failed ({error.status} {error.reason}); retry, or use --config"
