"""Render deploy/'s kustomizations and validate their objects, for tests/test_deploy*.py.

Core Kubernetes kinds are validated by kubernetes-validate against the published OpenAPI schemas
of a stated Kubernetes version, strictly (unknown fields are errors). Custom resources are
validated against the ``openAPIV3Schema`` of the CRDs kept in shared/schemas/crds, made strict the
same way: the API server would silently prune a misspelt field (``h2UpgradePolicyy``) and the
manifest would apply cleanly and do nothing, which is exactly the mistake a test must catch.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

# The Kubernetes versions every core object must validate against: the kubectl shipped on the
# development machines (1.32) and the newest schema kubernetes-validate carries.
K8S_VERSIONS = ("1.32.0", "1.37.0")

CRD_FILES = (
    "istio-crd-all.gen.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)


def kustomization_dirs() -> list[Path]:
    """Every directory under deploy/ that holds a kustomization, relative to deploy/."""
    return sorted(p.parent.relative_to(DEPLOY) for p in DEPLOY.rglob("kustomization.yaml"))


@cache
def render(kustomization: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/<kustomization>``, parsed; raises with kubectl's message."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: tuple[dict[str, Any], ...]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def api_group(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.rpartition("/")[0]


@dataclass(frozen=True)
class CrdVersion:
    group: str
    version: str
    kind: str
    served: bool
    schema: dict[str, Any]


def load_crds(crd_dir: Path) -> dict[tuple[str, str, str], CrdVersion]:
    """(group, version, kind) -> that CRD version's schema, from the shared CRD files."""
    index: dict[tuple[str, str, str], CrdVersion] = {}
    for doc in _crd_documents(crd_dir):
        spec = doc["spec"]
        for version in spec["versions"]:
            key = (spec["group"], version["name"], spec["names"]["kind"])
            schema = version["schema"]["openAPIV3Schema"]
            index[key] = CrdVersion(*key, version.get("served", False), strict_schema(schema))
    return index


def _crd_documents(crd_dir: Path) -> Iterator[dict[str, Any]]:
    for name in CRD_FILES:
        with (crd_dir / name).open(encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CRD's structural schema that rejects unknown fields, as the API server prunes
    them; apiVersion, kind and metadata are allowed at the root, as the API server does."""
    strict: dict[str, Any] = _close(copy.deepcopy(schema))
    root_props = strict.setdefault("properties", {})
    for key in ("apiVersion", "kind"):
        root_props.setdefault(key, {"type": "string"})
    root_props.setdefault("metadata", {"type": "object"})
    return strict


def _close(node: Any) -> Any:
    if isinstance(node, dict):
        for value in node.values():
            _close(value)
        open_ended = node.get("x-kubernetes-preserve-unknown-fields") is True
        if "properties" in node and "additionalProperties" not in node and not open_ended:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for item in node:
            _close(item)
    return node


def validate_custom(obj: dict[str, Any], crds: dict[tuple[str, str, str], CrdVersion]) -> None:
    group, _, version = obj["apiVersion"].rpartition("/")
    crd = crds.get((group, version, obj["kind"]))
    assert crd is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    assert crd.served, f"{obj['apiVersion']} {obj['kind']} is not served by the CRD"
    # No check_schema: one prometheus-operator pattern, '^(?i)(abort|warn)?$', is Go syntax that
    # Python's re rejects; it only matters for a field (partial_response_strategy) we never set.
    jsonschema.Draft7Validator(crd.schema).validate(obj)
