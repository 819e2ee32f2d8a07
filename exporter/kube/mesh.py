"""Read the mesh's configuration from a cluster for ``wslog doctor``, through the official client.

Services, Deployments and Pods (their labels), DestinationRules and EnvoyFilters (the first
``networking.istio.io`` version the server serves: v1, v1beta1, v1alpha3), the ``istio``
ConfigMap of the root namespace (the mesh config) and istiod's Deployments there (Istio's version
per revision). Lists are read raw (``_preload_content=False``) so the documents are exactly what
``kubectl get -o yaml`` shows, and go through the same ``parse`` as files do.

Without those the prediction is wrong, so a refusal stops the command. What only refines it is
optional: VirtualServices, Gateways and ServiceEntries, Namespaces (``istio.io/rev``), and the
ConfigMaps of every control plane in the root namespace (``istio-<revision>`` mesh configs, the
injector's Helm values with ``global.tag``). A refusal to read one of those is a problem in the
report naming the RBAC rule to add, and the prediction goes on without it.

Part of the ``exporter.kube`` package, the one place that talks to Kubernetes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from analyzer.doctor.model import DEFAULT_ROOT_NAMESPACE, Inventory
from analyzer.doctor.parse import inventory_from_manifests, istio_config_map
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


@dataclass(frozen=True)
class OptionalKind:
    """A kind the prediction can go without, and what it loses when the kind is refused."""

    kind: str
    group: str  # the RBAC rule's apiGroups entry ("" for the core group)
    plural: str
    loss: str

    @property
    def many(self) -> str:
        consonant_y = self.kind.endswith("y") and self.kind[-2] not in "aeiou"
        return f"{self.kind[:-1]}ies" if consonant_y else f"{self.kind}s"


VIRTUAL_SERVICES = OptionalKind(
    "VirtualService", ISTIO_GROUP, "virtualservices", "no subset routing is predicted"
)
GATEWAYS = OptionalKind(
    "Gateway", ISTIO_GROUP, "gateways", "only pods with Istio's gateway labels count as gateways"
)
SERVICE_ENTRIES = OptionalKind(
    "ServiceEntry", ISTIO_GROUP, "serviceentries", "ServiceEntry hosts are not checked"
)
NAMESPACES = OptionalKind(
    "Namespace", "", "namespaces", "a namespace's istio.io/rev revision is not known"
)
CONFIG_MAPS = OptionalKind(
    "ConfigMap",
    "",
    "configmaps",
    "only ConfigMap istio is read: other revisions' mesh configs and the injector's values "
    "(Istio's version) are not",
)


def read_cluster(settings: MeshReadSettings) -> Inventory:
    reader = _Reader(_connect(settings), settings)
    inventory = inventory_from_manifests(list(reader.manifests()))
    return replace(inventory, problems=(*reader.refused, *inventory.problems))


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
        self.refusals: list[OptionalKind] = []
        self.refused: list[str] = []  # problems: optional kinds the account may not read

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
        for optional in (VIRTUAL_SERVICES, GATEWAYS, SERVICE_ENTRIES):
            for namespace in _with_root(s.namespaces, s.root_namespace):
                found = self._istio(optional.plural, optional.kind, namespace)
                yield from self._optional(optional, found)
        if s.namespaces and s.root_namespace not in s.namespaces:
            yield from self._list("Deployment", self.apps, "deployment", s.root_namespace)
        yield from self._namespaces()
        yield from self._config_maps()

    def _optional(
        self, optional: OptionalKind, found: Iterator[dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        """The objects read; refused (403): none, and a problem naming the rule to add."""
        try:
            read = list(found)
        except _Refused as refused:
            if optional.kind not in {o.kind for o in self.refusals}:
                self.refusals.append(optional)
                self.refused.append(_refused(optional, refused, self.settings))
            return
        yield from read

    def _namespaces(self) -> Iterator[dict[str, Any]]:
        """Every Namespace, or those of ``--namespace`` one by one (``get``)."""
        if not self.settings.namespaces:
            yield from self._optional(NAMESPACES, self._all_namespaces())
            return
        for namespace in self.settings.namespaces:
            found = self._get(self.core.read_namespace, "Namespace", namespace)
            yield from self._optional(NAMESPACES, found)

    def _all_namespaces(self) -> Iterator[dict[str, Any]]:
        yield from _items(self._call(self.core.list_namespace, "Namespace"), "Namespace")

    def _config_maps(self) -> Iterator[dict[str, Any]]:
        """Every control plane's ConfigMaps in the root namespace; refused: ConfigMap ``istio``
        alone (``get``, as before revisions were read)."""
        root = self.settings.root_namespace
        listed = self._optional(CONFIG_MAPS, self._list("ConfigMap", self.core, "config_map", root))
        found = [c for c in listed if istio_config_map(str(c.get("metadata", {}).get("name")))]
        if CONFIG_MAPS in self.refusals:
            found = list(
                self._get(self.core.read_namespaced_config_map, "ConfigMap", "istio", root)
            )
        yield from ({**c, "apiVersion": "v1"} for c in found)

    def _get(self, call: Callable[..., Any], kind: str, *args: str) -> Iterator[dict[str, Any]]:
        """One object by name; none when it is not there."""
        try:
            body = self._call(call, kind, *args, raise_404=True)
        except _NotServed:
            return
        yield {"kind": kind, "apiVersion": "v1", **body}

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
            if error.status == 403:
                raise _Refused(_denied(kind, error), error) from error
            raise ClusterReadError(_denied(kind, error)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ClusterReadError(
                f"cannot reach the API server reading {kind}s: {error}"
            ) from error


class _NotServed(Exception):
    """404: that resource (or API version) is not there."""


class _Refused(ClusterReadError):
    """403: the account may not read that kind (fatal unless the kind is optional)."""

    def __init__(self, message: str, error: ApiException) -> None:
        super().__init__(message)
        self.status, self.reason = error.status, error.reason


def _refused(optional: OptionalKind, refused: _Refused, settings: MeshReadSettings) -> str:
    """What was not read, what the prediction loses, and the RBAC rule that would read it."""
    verb, where = "list", "a ClusterRole"
    if optional is CONFIG_MAPS:
        where = f"a Role in namespace {settings.root_namespace}"
    elif optional is NAMESPACES and settings.namespaces:
        verb = "get"
    elif settings.namespaces:
        shown = ", ".join(dict.fromkeys((*settings.namespaces, settings.root_namespace)))
        where = f"a Role in each of namespace(s) {shown}"
    return (
        f"{optional.many} not read ({refused.status} {refused.reason}): {optional.loss}; "
        f'to read them, add to {where} the rule apiGroups: ["{optional.group}"], '
        f'resources: ["{optional.plural}"], verbs: ["{verb}"]'
    )


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
