"""The fake Kubernetes API of ``fake_k8s``, plus what ``wslog doctor`` reads from a cluster.

``FakeMeshKube`` serves everything ``FakeKube`` does (pods, logs, faults) and, on the same port
and token: Services, Deployments, ConfigMaps, Namespaces (list, or get by name), and the Istio CRDs
``/apis/networking.istio.io/<version>/[namespaces/<ns>/]<plural>`` (destinationrules,
envoyfilters, virtualservices, gateways, serviceentries) for the versions in ``istio_versions``
(others answer 404, as a cluster with older CRDs does)::

    with FakeMeshKube(istio_versions=("v1alpha3",)) as kube:
        kube.add_object(service_manifest)
        kube.add_pod("default", "web-1", {"app": "web"})
        kube.deny("envoyfilters")        # 403 for list and get
        kube.deny_list("configmaps")     # 403 for list only (a Role granting get)

``fake_k8s.py`` is left untouched: the extra routes live in a handler subclass that the server
uses instead of the original (``RequestHandlerClass``), falling back to it for pod routes.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.fake_k8s import FakeKube
from tests.fake_k8s import _Handler as _PodHandler  # extended, not changed

__all__ = ["FakeMeshKube"]

RESOURCES = {
    ("", "Service"): "services",
    ("apps", "Deployment"): "deployments",
    ("", "ConfigMap"): "configmaps",
    ("networking.istio.io", "DestinationRule"): "destinationrules",
    ("networking.istio.io", "EnvoyFilter"): "envoyfilters",
    ("networking.istio.io", "VirtualService"): "virtualservices",
    ("networking.istio.io", "Gateway"): "gateways",
    ("networking.istio.io", "ServiceEntry"): "serviceentries",
    ("", "Namespace"): "namespaces",
}
CLUSTER_SCOPED = frozenset({"namespaces"})
COLLECTION = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[a-z]+)(?:/(?P<name>[^/]+))?$"
)


class FakeMeshKube(FakeKube):
    def __init__(self, istio_versions: tuple[str, ...] = ("v1", "v1beta1", "v1alpha3")) -> None:
        super().__init__()
        self.istio_versions = istio_versions
        self._objects: dict[str, list[dict[str, Any]]] = {r: [] for r in RESOURCES.values()}
        self._denied_lists: set[str] = set()
        self._server.RequestHandlerClass = _MeshHandler

    def __enter__(self) -> FakeMeshKube:
        self.start()
        return self

    def add_object(self, manifest: dict[str, Any]) -> None:
        """An object of a kind in ``RESOURCES`` (namespace ``default`` unless its metadata says
        otherwise; a Namespace has none), replacing one of the same kind, namespace and name."""
        group = str(manifest.get("apiVersion", "v1")).rpartition("/")[0]
        resource = RESOURCES[(group, str(manifest["kind"]))]
        stored = copy.deepcopy(manifest)
        if resource not in CLUSTER_SCOPED:
            stored.setdefault("metadata", {}).setdefault("namespace", "default")
        key = _identity(stored)
        with self._lock:  # as kubectl apply: the same namespace and name replaces the object
            kept = [o for o in self._objects[resource] if _identity(o) != key]
            self._objects[resource] = [*kept, stored]

    def deny_list(self, resource: str) -> None:
        """Refuse (403) listing ``resource``; reading one object by name stays allowed."""
        with self._lock:
            self._denied_lists.add(resource)

    def objects(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for o in self._objects[resource]
                if namespace in (None, o["metadata"].get("namespace"))
            ]


def _identity(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    meta = manifest.get("metadata", {})
    return meta.get("namespace"), meta.get("name")


class _MeshHandler(_PodHandler):
    @property
    def mesh(self) -> FakeMeshKube:
        fake = self.fake
        assert isinstance(fake, FakeMeshKube)
        return fake

    def _route(self, path: str, query: dict[str, str]) -> None:
        match = COLLECTION.match(path)
        if match is None or match["resource"] not in RESOURCES.values():
            super()._route(path, query)
            return
        with self.mesh._lock:
            self.mesh.requests.append(("mesh", self.path))
            denied = match["resource"] in self.mesh._denied or (
                not match["name"] and match["resource"] in self.mesh._denied_lists
            )
        if self.headers.get("Authorization") != f"Bearer {self.mesh.token}":
            self._status(401, "Unauthorized", "Unauthorized")
        elif denied:
            message = f'{match["resource"]} is forbidden: User "doctor" cannot list it'
            self._status(403, "Forbidden", message)
        elif match["group"] == "networking.istio.io" and (
            match["version"] not in self.mesh.istio_versions
        ):
            self._status(404, "NotFound", "the server could not find the requested resource")
        elif match["name"]:
            self._get_one(match["resource"], match["ns"], match["name"])
        else:
            items = self.mesh.objects(match["resource"], match["ns"])
            if match["group"] != "networking.istio.io":  # built-in kinds' items carry no kind
                items = [
                    {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items
                ]
            self._json(200, {"kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})

    def _get_one(self, resource: str, namespace: str | None, name: str) -> None:
        found = [o for o in self.mesh.objects(resource, namespace) if o["metadata"]["name"] == name]
        if found:
            self._json(200, found[0])
        else:
            self._status(404, "NotFound", f'{resource} "{name}" not found')
