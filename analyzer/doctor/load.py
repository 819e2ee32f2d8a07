"""Read Kubernetes and Istio YAML from disk: files, directories, list dumps, multi-document files.

An edge: it only turns paths into documents and hands them to ``parse``. A directory holding a
``kustomization.yaml`` is rendered by the ``kustomize`` callable the caller passes (the CLI runs
``kubectl kustomize``), because its resources may live outside the directory; other directories
are read recursively (``*.yaml``, ``*.yml``, ``*.json``). ``-`` reads standard input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from analyzer.doctor.model import DEFAULT_NAMESPACE, Inventory
from analyzer.doctor.parse import inventory_from_manifests
from analyzer.errors import InputError

Kustomize = Callable[[Path], str]
SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def load_paths(
    paths: Sequence[str],
    kustomize: Kustomize | None = None,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> Inventory:
    docs: list[Any] = []
    for path in paths:
        for name, text in _texts(path, kustomize):
            docs.extend(parse_documents(text, name))
    return inventory_from_manifests(docs, default_namespace)


def parse_documents(text: str, name: str) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise InputError(
            f"{name}: not valid YAML ({error}); fix the file or leave it out "
            "(access logs go to --logs)"
        ) from error


def _texts(path: str, kustomize: Kustomize | None) -> Iterator[tuple[str, str]]:
    if path == "-":
        yield "<stdin>", sys.stdin.read()
        return
    target = Path(path)
    if target.is_dir():
        yield from _directory(target, kustomize)
    elif target.is_file():
        yield str(target), _read(target)
    else:
        raise InputError(f"{path}: no such file or directory")


def _directory(directory: Path, kustomize: Kustomize | None) -> Iterator[tuple[str, str]]:
    if any((directory / k).is_file() for k in KUSTOMIZATIONS):
        if kustomize is None:
            raise InputError(
                f"{directory} is a kustomization: render it first "
                f"(kubectl kustomize {directory} | wslog doctor --config -)"
            )
        yield f"kustomize {directory}", kustomize(directory)
        return
    for file in sorted(directory.rglob("*")):
        if file.is_file() and file.suffix in SUFFIXES:
            yield str(file), _read(file)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: cannot read it ({error})") from error
