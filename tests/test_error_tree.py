"""One exception tree: every error wslog raises on purpose derives from ``WslogError``, so a
caller (and each command's error handler) catches them all in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import analyzer
import exporter
import lab
import wslog
from analyzer.errors import WslogError


def public_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (analyzer, exporter, lab, wslog):
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                own = inspect.isclass(value) and value.__module__ == module.__name__
                if own and issubclass(value, BaseException) and not name.startswith("_"):
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_public_exception_is_a_wslog_error() -> None:
    found = public_exceptions()
    assert len(found) >= 10
    strays = sorted(name for name, cls in found.items() if not issubclass(cls, WslogError))
    assert strays == []
